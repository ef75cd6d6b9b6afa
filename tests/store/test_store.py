"""The store on real databases: permissions, migrations, hashing, apps, tokens, services, grants.

Tests taking the `store` fixture run on SQLite (a file) and on PostgreSQL (a throwaway database of
the `pg_virtualenv` cluster; see tests/pgfixtures.py).
"""

import os
import sqlite3
import stat

import pytest

from pgfixtures import new_database

from qfserve.store import apps, services, tokens
from qfserve.store.db import DB_NAME, Store, _migrations


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    drop = None
    if request.param == "postgresql":
        url, drop = new_database()
        s = Store(tmp_path, url)
    else:
        s = Store(tmp_path)
    yield s
    s.close()
    if drop is not None:
        drop()


def dump(store) -> str:
    """Every stored value as text, whichever the database."""
    from qfserve.store import schema

    lines = []
    for table in schema.metadata.sorted_tables:
        for row in store.connection().execute(f"SELECT * FROM {table.name}"):
            lines.append(" ".join(map(str, row)))
    return "\n".join(lines)


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def test_file_is_owner_only_and_wal(sqlite_store):
    store = sqlite_store
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _head_revision() -> int:
    from importlib import resources

    folder = resources.files("qfserve.store").joinpath("schema_history", "versions")
    return max(int(entry.name[:4]) for entry in folder.iterdir() if entry.name[:4].isdigit())


def test_migrations_are_versioned_and_idempotent(tmp_path):
    latest = _head_revision()
    assert latest >= _migrations()[-1][0]  # the Alembic history continues the numbered one
    first = Store(tmp_path)
    assert first.schema_version() == latest
    first.close()
    again = Store(tmp_path)  # reopening applies nothing twice
    assert again.migrate() == latest
    again.close()


def test_secrets_are_hashed_or_encrypted(store):
    creds = apps.create_app(store, "a")
    token, _, _ = tokens.issue_token(store, creds.app)
    text = dump(store)
    assert creds.secret_key not in text and token not in text
    # The Secret Access Key keys an HMAC, so it is kept, encrypted under a key outside the database.
    assert creds.secret_access_key not in text
    assert apps.find_by_access_key(store, creds.app.access_key)[1] == creds.secret_access_key


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
    for api_path in ("xx", "yy"):
        services.publish_service(store, api_path, model="default", profile="ERNIE-Speed-8K")
    creds = apps.create_app(store, "a")
    assert apps.may_call(store, creds.app, "xx")
    apps.grant(store, "a", "xx")
    app = apps.get_app(store, "a")
    assert apps.may_call(store, app, "xx") and not apps.may_call(store, app, "yy")
    apps.revoke(store, "a", "xx")
    assert not apps.may_call(store, apps.get_app(store, "a"), "xx")
    apps.allow_all(store, "a")
    assert apps.may_call(store, apps.get_app(store, "a"), "yy")


def test_grant_of_no_service_and_revoke_of_no_grant_are_refused(store):
    services.publish_service(store, "xx", model="default", profile="ERNIE-Speed-8K")
    apps.create_app(store, "a")
    with pytest.raises(apps.GrantError, match="no service at 'nosuch'"):
        apps.grant(store, "a", "nosuch")
    assert apps.get_app(store, "a").all_services  # the typo did not restrict the app
    with pytest.raises(apps.GrantError, match="no grants"):
        apps.revoke(store, "a", "xx")
    apps.grant(store, "a", "xx")
    with pytest.raises(apps.GrantError, match="no grant for 'yy'"):
        apps.revoke(store, "a", "yy")
    assert apps.granted_paths(store, apps.get_app(store, "a").id) == ["xx"]


def test_rotation_grace_keeps_old_credentials_and_tokens_until_it_ends(store):
    old = apps.create_app(store, "a")
    old_token, _, _ = tokens.issue_token(store, old.app, now=1000)
    new = apps.rotate_app(store, "a", grace=3600, now=1000)
    assert new.old_valid_until == 4600 and new.as_dict()["old_credentials_valid_until"] == 4600
    # During the grace: old token, old API Key / Secret Key and old IAM pair all still work.
    assert tokens.lookup_token(store, old_token, now=4599)[0].name == "a"
    found = apps.check_client(store, old.app.api_key, old.secret_key, now=4599)
    assert found.name == "a" and found.retiring_at == 4600
    assert apps.check_client(store, old.app.api_key, "wrong", now=4599) is False
    token_from_old_keys, _, _ = tokens.issue_token(store, found, now=4000)
    assert tokens.lookup_token(store, token_from_old_keys, now=4599) is not None
    app, secret = apps.find_by_access_key(store, old.app.access_key, now=4599)
    assert app.name == "a" and secret == old.secret_access_key
    # The new ones work, and their tokens outlive the grace.
    assert apps.check_client(store, new.app.api_key, new.secret_key, now=4599).retiring_at is None
    new_token, _, _ = tokens.issue_token(store, new.app, now=4000)
    # After it: all old ones stop, the new ones go on.
    assert tokens.lookup_token(store, old_token, now=4600) is None
    assert tokens.lookup_token(store, token_from_old_keys, now=4600) is None
    assert apps.check_client(store, old.app.api_key, old.secret_key, now=4600) is None
    assert apps.find_by_access_key(store, old.app.access_key, now=4600) is None
    assert tokens.lookup_token(store, new_token, now=4600) is not None
    assert tokens.purge_expired(store, now=4600) == 2
    # An expired token is kept a week, so its caller hears "expired" (111), then purged.
    short, _, _ = tokens.issue_token(store, new.app, ttl=10, now=5000)
    assert tokens.purge_expired(store, now=5011) == 0
    assert tokens.purge_expired(store, now=5011 + tokens.EXPIRED_KEPT) == 1


def test_rotation_now_ends_every_old_pair_at_once(store):
    first = apps.create_app(store, "a")
    second = apps.rotate_app(store, "a", grace=3600)
    token, _, _ = tokens.issue_token(store, second.app)
    apps.rotate_app(store, "a")  # grace 0: also ends the pair retired by the first rotation
    assert apps.check_client(store, first.app.api_key, first.secret_key) is None
    assert apps.check_client(store, second.app.api_key, second.secret_key) is None
    assert tokens.lookup_token(store, token) is None


def test_update_service_changes_only_what_it_names(store):
    services.publish_service(store, "svc_2", model="default", profile="ERNIE-Lite-8K", adapter="/a", rpm=5, tpm=50,
                             safety="strict", top_k=20, min_p=0.1)
    services.update_service(store, "svc_2", rpm=9)
    assert services.get_service(store, "svc_2") == services.Service(
        "svc_2", "default", "/a", "ERNIE-Lite-8K", 9, 50, "strict", services.get_service(store, "svc_2").created_at,
        20, 0.1)
    services.update_service(store, "svc_2", top_k=None, min_p=None, adapter=None)
    changed = services.get_service(store, "svc_2")
    assert (changed.top_k, changed.min_p, changed.adapter, changed.rpm) == (None, None, None, 9)
    for bad in ({"top_k": -1}, {"top_k": 1.5}, {"min_p": 1.5}, {"min_p": -0.1}, {"rpm": 0}, {"safety": "lax"},
                {"name": "x"}, {"model": None}):
        with pytest.raises(ValueError):
            services.update_service(store, "svc_2", **bad)
    with pytest.raises(services.ServiceNotFound):
        services.update_service(store, "nosuch", rpm=1)


def test_services(store):
    service = services.publish_service(store, "svc_1", model="default", profile="ERNIE-Lite-8K", rpm=5, tpm=50)
    assert (service.rpm, service.tpm, service.adapter) == (5, 50, None)
    with pytest.raises(services.ServiceExists):
        services.publish_service(store, "svc_1", model="default", profile="ERNIE-Lite-8K")
    services.update_service(store, "svc_1", profile="ERNIE-Tiny-8K")
    changed = services.get_service(store, "svc_1")
    assert (changed.profile, changed.rpm, changed.tpm) == ("ERNIE-Tiny-8K", 5, 50)  # only what was named
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
    text = dump(store)
    assert creds.v2_api_key not in text and bearer not in text  # hashed, like the Secret Key

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
    conn.execute("DROP INDEX retired_v2_key")
    conn.execute("ALTER TABLE retired_credentials DROP COLUMN v2_key_hash")
    conn.execute("INSERT INTO apps (name, api_key, secret_key_hash, access_key, secret_access_key, created_at)"
                 " VALUES ('old', 'k', 'h', 'ak', 'sk', 0)")
    conn.execute("UPDATE alembic_version SET version_num = '0007'")
    conn.commit()
    conn.close()
    upgraded = Store(tmp_path)  # applies 0008 to a database that has apps
    assert apps.get_app(upgraded, "old").api_key == "k"
    assert apps.rotate_app(upgraded, "old").v2_api_key.startswith("bce-v3/ALTAK-")
    upgraded.close()


def test_a_rotated_v2_key_works_through_the_grace_then_stops(tmp_path):
    store = Store(tmp_path)
    old = apps.create_app(store, "a")
    new = apps.rotate_app(store, "a", grace=3600, now=1000)
    assert new.v2_api_key != old.v2_api_key
    assert apps.find_by_v2_key(store, old.v2_api_key, now=4599).retiring_at == 4600
    assert apps.find_by_v2_key(store, old.v2_api_key, now=4600) is None
    assert apps.find_by_v2_key(store, new.v2_api_key, now=4600).retiring_at is None
    store.close()
