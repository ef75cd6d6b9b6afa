"""Baseline: the schema of numbered SQL migrations 0001-0007 (apps, grants, tokens, services,
memories, retired credentials, quotas and usage, console, engine pools), frozen here.

SQLite data dirs made before Alembic are upgraded by those files, then stamped at this revision.
On PostgreSQL, a trigger on each watched table NOTIFYs `qfserve_changes`, so running gateways hear
of a change however it was made (CLI, console, another gateway) without reading the database per
request.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = None
branch_labels = None
depends_on = None

WATCHED = ("engine_pools", "services", "apps", "grants")


def _app_id():
    return sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("api_key", sa.Text, nullable=False, unique=True),
        sa.Column("secret_key_hash", sa.Text, nullable=False),
        sa.Column("access_key", sa.Text, nullable=False, unique=True),
        sa.Column("secret_access_key", sa.Text, nullable=False),
        sa.Column("all_services", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("qps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("daily_requests", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "grants", _app_id(), sa.Column("api_path", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("app_id", "api_path"),
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        _app_id(),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("tokens_app", "tokens", ["app_id"])
    op.create_table(
        "services",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("api_path", sa.Text, nullable=False, unique=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("adapter", sa.Text),
        sa.Column("profile", sa.Text, nullable=False),
        sa.Column("rpm", sa.Integer, nullable=False),
        sa.Column("tpm", sa.Integer, nullable=False),
        sa.Column("safety", sa.Text, nullable=False, server_default="default"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("top_k", sa.Integer),
        sa.Column("min_p", sa.Double),
        sa.Column("engine", sa.Text),
    )
    op.create_table(
        "memories",
        sa.Column("id", sa.Integer, primary_key=True),
        _app_id(),
        sa.Column("api_path", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("slot", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("extractor", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("last_used_at", sa.Double, nullable=False),
        sa.Column("superseded_by", sa.Integer),
    )
    op.create_index("memories_owner", "memories", ["app_id", "user_id", "api_path"])
    op.create_table(
        "retired_credentials",
        sa.Column("id", sa.Integer, primary_key=True),
        _app_id(),
        sa.Column("api_key", sa.Text, nullable=False),
        sa.Column("secret_key_hash", sa.Text, nullable=False),
        sa.Column("access_key", sa.Text, nullable=False),
        sa.Column("secret_access_key", sa.Text, nullable=False),
        sa.Column("valid_until", sa.BigInteger, nullable=False),
    )
    op.create_index("retired_api_key", "retired_credentials", ["api_key"])
    op.create_index("retired_access_key", "retired_credentials", ["access_key"])
    op.create_table(
        "usage",
        _app_id(),
        sa.Column("api_path", sa.Text, nullable=False),
        sa.Column("day", sa.Text, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("app_id", "day", "api_path"),
    )
    op.create_table(
        "console_signin_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("csrf_token", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("conversations", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("console_datasets.id"), nullable=False),
        sa.Column("out_dir", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("eval_status", sa.Text),
        sa.Column("eval_result", sa.Text),
        sa.Column("service", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger),
    )
    op.create_table(
        "engine_pools",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("urls", sa.Text, nullable=False),
        sa.Column("api_key_env", sa.Text),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION qfserve_notify_change() RETURNS trigger AS $$
            BEGIN
                PERFORM pg_notify('qfserve_changes', TG_TABLE_NAME);
                RETURN NULL;
            END;
            $$ LANGUAGE plpgsql
        """)
        for table in WATCHED:
            op.execute(f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION qfserve_notify_change()")


def downgrade() -> None:
    raise NotImplementedError("the baseline cannot be undone")
