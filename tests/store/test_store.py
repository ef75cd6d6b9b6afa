"""The SQLite store on real files: permissions, migrations, hashing, apps, tokens, services, grants."""

import os
import sqlite3
import stat

import pytest

from qfserve.store import apps, services, tokens
from qfserve.store.db import DB_NAME, Store, _migrations


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def test_file_is_owner_only_and_wal(store):
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_are_versioned_and_idempotent(tmp_path):
    latest = _migrations()[-1][0]
    first = Store(tmp_path)
    assert first.schema_version() == latest
    first.close()
    again = Store(tmp_path)  # reopening applies nothing twice
    assert again.migrate() == latest
    again.close()


def test_secret_key_and_tokens_are_stored_hashed(store):
    creds = apps.create_app(store, "a")
    token, _, _ = tokens.issue_token(store, creds.app)
    dump = "\n".join(store.connection().iterdump())
    assert creds.secret_key not in dump and token not in dump
    assert creds.secret_access_key in dump  # it keys an HMAC, so it must be kept


def test_check_client(store):
    creds = apps.create_app(store, "a")
    assert apps.check_client(store, creds.app.api_key, creds.secret_key).name == "a"
    assert apps.check_client(store, creds.app.api_key, "wrong") is False
    assert apps.check_client(store, "nobody", creds.secret_key) is None


def test_token_lifecycle(store):
    creds = apps.create_app(store, "a")
    token, refresh, expires = tokens.issue_token(store, creds.app, now=1000)
    assert token.startswith("24.") and refresh.startswith("25.") and expires == 1000 + tokens.TOKEN_TTL
    assert token.split(".")[2] == str(tokens.TOKEN_TTL)
    app, expires_at = tokens.lookup_token(store, token)
    assert app.name == "a" and expires_at == expires
    assert tokens.lookup_token(store, token + "x") is None


def test_delete_and_rotate_revoke_tokens(store):
    a = apps.create_app(store, "a")
    b = apps.create_app(store, "b")
    token_a, _, _ = tokens.issue_token(store, a.app)
    token_b, _, _ = tokens.issue_token(store, b.app)
    rotated = apps.rotate_app(store, "a")
    assert rotated.app.api_key != a.app.api_key and rotated.secret_access_key != a.secret_access_key
    assert tokens.lookup_token(store, token_a) is None
    apps.delete_app(store, "b")
    assert tokens.lookup_token(store, token_b) is None


def test_grants(store):
    creds = apps.create_app(store, "a")
    assert apps.may_call(store, creds.app, "x")
    apps.grant(store, "a", "x")
    app = apps.get_app(store, "a")
    assert apps.may_call(store, app, "x") and not apps.may_call(store, app, "y")
    apps.revoke(store, "a", "x")
    assert not apps.may_call(store, apps.get_app(store, "a"), "x")
    apps.allow_all(store, "a")
    assert apps.may_call(store, apps.get_app(store, "a"), "y")


def test_services(store):
    service = services.publish_service(store, "svc_1", model="default", profile="ERNIE-Lite-8K", rpm=5, tpm=50)
    assert (service.rpm, service.tpm, service.adapter) == (5, 50, None)
    with pytest.raises(services.ServiceExists):
        services.publish_service(store, "svc_1", model="default", profile="ERNIE-Lite-8K")
    services.publish_service(store, "svc_1", model="default", profile="ERNIE-Tiny-8K", replace=True)
    assert services.get_service(store, "svc_1").profile == "ERNIE-Tiny-8K"
    services.delete_service(store, "svc_1")
    assert services.get_service(store, "svc_1") is None
    with pytest.raises(services.ServiceNotFound):
        services.delete_service(store, "svc_1")


@pytest.mark.parametrize("bad", ["A", "x", "a" * 21, "Upper", "sp ace", "dot.ted", "中文"])
def test_api_path_rule(bad):
    with pytest.raises(ValueError, match="invalid api_path"):
        services.check_api_path(bad)


def test_changes_from_another_connection_are_seen(tmp_path):
    """What the CLI writes while a server runs is visible to the server's next read."""
    server_side = Store(tmp_path)
    assert services.get_service(server_side, "late") is None
    cli_side = Store(tmp_path)
    services.publish_service(cli_side, "late", model="default", profile="ERNIE-Speed-8K")
    cli_side.close()
    assert services.get_service(server_side, "late") is not None
    server_side.close()


def test_v2_api_key_and_bearer_tokens(store):
    import re

    from qfserve.store import bearer_tokens

    creds = apps.create_app(store, "v2")
    assert re.fullmatch(r"bce-v3/ALTAK-[A-Za-z0-9]{21}/[0-9a-f]{40}", creds.v2_api_key)
    assert creds.as_dict()["v2_api_key"] == creds.v2_api_key
    assert apps.find_by_v2_key(store, creds.v2_api_key) == creds.app
    assert apps.find_by_v2_key(store, creds.v2_api_key + "x") is None
    bearer, created, expires = bearer_tokens.issue_bearer_token(store, creds.app, 600)
    assert expires - created == 600 and bearer_tokens.lookup_bearer_token(store, bearer) == (creds.app, expires)
    assert tokens.lookup_token(store, bearer) is None  # kinds do not mix
    dump = "\n".join(store.connection().iterdump())
    assert creds.v2_api_key not in dump and bearer not in dump  # hashed, like the Secret Key

    rotated = apps.rotate_app(store, "v2")
    assert apps.find_by_v2_key(store, creds.v2_api_key) is None
    assert apps.find_by_v2_key(store, rotated.v2_api_key) == rotated.app
    assert bearer_tokens.lookup_bearer_token(store, bearer) is None  # rotation revokes bearer tokens
    again, _, _ = bearer_tokens.issue_bearer_token(store, rotated.app, 600)
    apps.delete_app(store, "v2")
    assert bearer_tokens.lookup_bearer_token(store, again) is None


def test_apps_from_before_v2_keep_working_and_get_a_key_on_rotation(tmp_path):
    path = tmp_path / DB_NAME
    old = Store(tmp_path)
    old.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE bearer_tokens")
    conn.execute("DROP INDEX apps_v2_key")
    conn.execute("ALTER TABLE apps DROP COLUMN v2_key_hash")
    conn.execute("INSERT INTO apps (name, api_key, secret_key_hash, access_key, secret_access_key, created_at)"
                 " VALUES ('old', 'k', 'h', 'ak', 'sk', 0)")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    upgraded = Store(tmp_path)  # applies 0008 to a database that has apps
    assert apps.get_app(upgraded, "old").api_key == "k"
    assert apps.rotate_app(upgraded, "old").v2_api_key.startswith("bce-v3/ALTAK-")
    upgraded.close()
