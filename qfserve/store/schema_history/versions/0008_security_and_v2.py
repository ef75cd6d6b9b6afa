"""Security hardening (issue 16) and the v2 surface (issue 12), in the one history.

- `app_id_high_water`: app ids are never reused (a deleted app's rate-limit windows and token
  suffix must not carry over); `create_app` takes the next id from this one-row mark.
- `services.adapter_sha256`: the adapter GGUF's sha256 pinned at publish.
- `apps.v2_key_hash` and `bearer_tokens`: v2 API keys and the bearer tokens of
  `GET /v1/BCE-BEARER/token`, stored hashed; `retired_credentials.v2_key_hash`: a rotated v2 key
  keeps working through the rotation's grace period.

Each step checks what is there first: a SQLite data dir from the numbered history may already
have some of it (its numbered 0003), or not (dirs made while 0003 was on another branch).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _inspector():
    return sa.inspect(op.get_bind())


def _columns(table: str) -> set[str]:
    return {column["name"] for column in _inspector().get_columns(table)}


def upgrade() -> None:
    tables = set(_inspector().get_table_names())
    if "app_id_high_water" not in tables:
        op.create_table(
            "app_id_high_water",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("last_id", sa.Integer, nullable=False),
            sa.CheckConstraint("id = 1", name="app_id_high_water_one_row"),
        )
        op.execute("INSERT INTO app_id_high_water (id, last_id) SELECT 1, COALESCE(MAX(id), 0) FROM apps")
    if "adapter_sha256" not in _columns("services"):
        op.add_column("services", sa.Column("adapter_sha256", sa.Text))
    if "v2_key_hash" not in _columns("apps"):
        op.add_column("apps", sa.Column("v2_key_hash", sa.Text))
        op.create_index("apps_v2_key", "apps", ["v2_key_hash"], unique=True)
    if "bearer_tokens" not in tables:
        op.create_table(
            "bearer_tokens",
            sa.Column("token_hash", sa.Text, primary_key=True),
            sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
            sa.Column("expires_at", sa.BigInteger, nullable=False),
            sa.Column("created_at", sa.BigInteger, nullable=False),
        )
        op.create_index("bearer_tokens_app", "bearer_tokens", ["app_id"])
    if "v2_key_hash" not in _columns("retired_credentials"):
        op.add_column("retired_credentials", sa.Column("v2_key_hash", sa.Text))
        op.create_index("retired_v2_key", "retired_credentials", ["v2_key_hash"])


def downgrade() -> None:
    raise NotImplementedError("qfserve's history only moves forward")
