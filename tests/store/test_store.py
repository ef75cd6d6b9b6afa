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


@pytest.mark.parametrize("bad", ["A", "x", "a" * 65, "Upper", "sp ace", "dot.ted", "中文"])
def test_api_path_rule(bad):
    with pytest.raises(ValueError, match="invalid api_path"):
        services.check_api_path(bad)


@pytest.mark.parametrize("good", ["ab", "qianfan_bloomz_7b_compressed", "a" * 64])
def test_api_path_rule_allows_qianfan_endpoint_names(good):
    assert services.check_api_path(good) == good


def test_changes_from_another_connection_are_seen(tmp_path):
    """What the CLI writes while a server runs is visible to the server's next read."""
    server_side = Store(tmp_path)
    assert services.get_service(server_side, "late") is None
    cli_side = Store(tmp_path)
    services.publish_service(cli_side, "late", model="default", profile="ERNIE-Speed-8K")
    cli_side.close()
    assert services.get_service(server_side, "late") is not None
    server_side.close()
