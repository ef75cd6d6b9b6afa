"""The one schema definition, for SQLite and PostgreSQL alike (SQLAlchemy Core).

Alembic's history (`schema_history/`) creates and changes it; `qfserve db copy` walks it in
foreign-key order. Types are the portable ones: timestamps stored as REAL use `Double` (a
PostgreSQL `real` would keep 7 digits of a Unix time), flags are integers as SQLite has them.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)

metadata = MetaData()


def _app_id() -> Column:
    return Column("app_id", Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)


apps = Table(
    "apps", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("api_key", Text, nullable=False, unique=True),
    Column("secret_key_hash", Text, nullable=False),
    Column("access_key", Text, nullable=False, unique=True),
    Column("secret_access_key", Text, nullable=False),
    Column("all_services", Integer, nullable=False, server_default="1"),
    Column("created_at", BigInteger, nullable=False),
    Column("qps", Integer, nullable=False, server_default="0"),
    Column("daily_requests", Integer, nullable=False, server_default="0"),
    Column("v2_key_hash", Text),
    Index("apps_v2_key", "v2_key_hash", unique=True),
)

# Ids are never reused: create_app takes the next one from this one-row high-water mark.
app_id_high_water = Table(
    "app_id_high_water", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Integer, nullable=False),
    CheckConstraint("id = 1", name="app_id_high_water_one_row"),
)

grants = Table(
    "grants", metadata,
    _app_id(),
    Column("api_path", Text, nullable=False),
    PrimaryKeyConstraint("app_id", "api_path"),
)

tokens = Table(
    "tokens", metadata,
    Column("token_hash", Text, primary_key=True),
    _app_id(),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Index("tokens_app", "app_id"),
)

services = Table(
    "services", metadata,
    Column("id", Integer, primary_key=True),
    Column("api_path", Text, nullable=False, unique=True),
    Column("model", Text, nullable=False),
    Column("adapter", Text),
    Column("profile", Text, nullable=False),
    Column("rpm", Integer, nullable=False),
    Column("tpm", Integer, nullable=False),
    Column("safety", Text, nullable=False, server_default="default"),
    Column("created_at", BigInteger, nullable=False),
    Column("top_k", Integer),
    Column("min_p", Double),
    Column("engine", Text),
    Column("adapter_sha256", Text),
)

memories = Table(
    "memories", metadata,
    Column("id", Integer, primary_key=True),
    _app_id(),
    Column("api_path", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("slot", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("extractor", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double, nullable=False),
    Column("superseded_by", Integer),
    Index("memories_owner", "app_id", "user_id", "api_path"),
)

retired_credentials = Table(
    "retired_credentials", metadata,
    Column("id", Integer, primary_key=True),
    _app_id(),
    Column("api_key", Text, nullable=False),
    Column("secret_key_hash", Text, nullable=False),
    Column("access_key", Text, nullable=False),
    Column("secret_access_key", Text, nullable=False),
    Column("valid_until", BigInteger, nullable=False),
    Column("v2_key_hash", Text),
    Index("retired_api_key", "api_key"),
    Index("retired_access_key", "access_key"),
    Index("retired_v2_key", "v2_key_hash"),
)

bearer_tokens = Table(
    "bearer_tokens", metadata,
    Column("token_hash", Text, primary_key=True),
    _app_id(),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("bearer_tokens_app", "app_id"),
)

usage = Table(
    "usage", metadata,
    _app_id(),
    Column("api_path", Text, nullable=False),
    Column("day", Text, nullable=False),
    Column("requests", Integer, nullable=False, server_default="0"),
    Column("prompt_tokens", Integer, nullable=False, server_default="0"),
    Column("completion_tokens", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("app_id", "day", "api_path"),
)

console_signin_tokens = Table(
    "console_signin_tokens", metadata,
    Column("token_hash", Text, primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

console_sessions = Table(
    "console_sessions", metadata,
    Column("token_hash", Text, primary_key=True),
    Column("csrf_token", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

console_datasets = Table(
    "console_datasets", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("conversations", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

console_jobs = Table(
    "console_jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("dataset_id", Integer, ForeignKey("console_datasets.id"), nullable=False),
    Column("out_dir", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("pid", Integer),
    Column("error", Text),
    Column("eval_status", Text),
    Column("eval_result", Text),
    Column("service", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
)

engine_pools = Table(
    "engine_pools", metadata,
    Column("name", Text, primary_key=True),
    Column("urls", Text, nullable=False),
    Column("api_key_env", Text),
    Column("options", Text, nullable=False, server_default="{}"),
    Column("created_at", BigInteger, nullable=False),
)

# Tables whose changes running gateways must hear about (PostgreSQL: a NOTIFY trigger on each).
WATCHED = ("engine_pools", "services", "apps", "grants")
