"""A throwaway PostgreSQL database per test, in the cluster `pg_virtualenv` started (.ci/run does).

The cluster comes from the PG* environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD), or
QFSERVE_TEST_DATABASE_URL. Without either the tests that need it skip, saying how to run them;
with QFSERVE_CI set (.ci/run) they fail instead.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import pytest


def admin_url() -> str | None:
    explicit = os.environ.get("QFSERVE_TEST_DATABASE_URL")
    if explicit:
        return explicit
    if not os.environ.get("PGHOST"):
        return None
    user = quote(os.environ.get("PGUSER", "postgres"))
    password = quote(os.environ.get("PGPASSWORD", ""))
    auth = f"{user}:{password}@" if password else f"{user}@"
    host = os.environ["PGHOST"]
    port = os.environ.get("PGPORT", "5432")
    return f"postgresql://{auth}{host}:{port}/{os.environ.get('PGDATABASE', 'postgres')}"


def need_postgres() -> str:
    url = admin_url()
    if url is None:
        message = ("no PostgreSQL: run the suite inside `pg_virtualenv` (Debian's postgresql package), "
                   "or set QFSERVE_TEST_DATABASE_URL")
        if os.environ.get("QFSERVE_CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def new_database() -> tuple[str, callable]:
    """A fresh empty database: (its URL, a function that drops it)."""
    import psycopg

    admin = need_postgres()
    name = "qf_" + secrets.token_hex(6)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = admin.rpartition("/")
    url = f"{base}/{name}"

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return url, drop


@pytest.fixture
def pg_url():
    url, drop = new_database()
    yield url
    drop()
