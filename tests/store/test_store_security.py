"""Housekeeping of issue 16 on real SQLite files: an 0002 database upgrading in place with nothing
lost, app ids never reused, secure_delete, the IAM secret encrypted under a key outside the
database, owner-only files."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from qfserve.store import apps, memories, tokens
from qfserve.store.db import DB_NAME, Store, _migrations, _split
from qfserve.store.secret_box import KEY_ENV, KEY_FILE, SecretKeyError


def make_0002_database(data_dir) -> dict:
    """A data dir as the server before issue 16 left it: schema 0002, plaintext IAM secrets, a gap in the ids."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    for version, _name, sql in _migrations():
        if version <= 2:
            for statement in _split(sql):
                db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    rows = [(1, "one", "k1", "h1", "ak1", "plain-secret-1"), (2, "two", "k2", "h2", "ak2", "plain-secret-2"),
            (3, "three", "k3", "h3", "ak3", "plain-secret-3")]
    db.executemany("INSERT INTO apps (id, name, api_key, secret_key_hash, access_key, secret_access_key, created_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, 0)", rows)
    db.execute("DELETE FROM apps WHERE id = 2")
    db.execute("INSERT INTO grants (app_id, api_path) VALUES (3, 'svc')")
    db.execute("UPDATE apps SET all_services = 0 WHERE id = 3")
    db.execute("INSERT INTO tokens (token_hash, app_id, expires_at, created_at) VALUES ('t3', 3, 99999999999, 0)")
    db.execute("INSERT INTO services (api_path, model, adapter, profile, rpm, tpm, safety, created_at)"
               " VALUES ('svc', 'default', NULL, 'ERNIE-Speed-8K', 5, 50, 'default', 0)")
    db.execute("INSERT INTO memories (app_id, api_path, user_id, slot, text, extractor, request_id, round,"
               " created_at, last_used_at) VALUES (3, 'svc', 'u1', 'name', 'the user is Li', 'rules', 'as-x', 1, 0, 0)")
    db.close()
    return {"secrets": {"ak1": "plain-secret-1", "ak3": "plain-secret-3"}}


def test_0002_database_upgrades_in_place_with_nothing_lost(tmp_path):
    make_0002_database(tmp_path)
    store = Store(tmp_path)
    try:
        assert store.schema_version() >= 3
        assert [a.name for a in apps.list_apps(store)] == ["one", "three"]
        three = apps.get_app(store, "three")
        assert apps.granted_paths(store, three.id) == ["svc"] and not three.all_services
        assert store.connection().execute("SELECT app_id FROM tokens WHERE token_hash = 't3'").fetchone()[0] == 3
        assert [m.text for m in memories.list_memories(store, "u1")] == ["the user is Li"]
        # The plaintext IAM secrets were sealed on opening, and still verify signatures.
        dump = "\n".join(store.connection().iterdump())
        assert "plain-secret-1" not in dump and "plain-secret-3" not in dump
        assert apps.find_by_access_key(store, "ak1")[1] == "plain-secret-1"
        assert apps.find_by_access_key(store, "ak3")[1] == "plain-secret-3"
        # The next app continues after the highest id there is.
        assert apps.create_app(store, "four").app.id == 4
    finally:
        store.close()
    reopened = Store(tmp_path)  # a second open changes nothing
    assert apps.find_by_access_key(reopened, "ak3")[1] == "plain-secret-3"
    reopened.close()


def test_app_ids_are_never_reused(tmp_path):
    store = Store(tmp_path)
    first = apps.create_app(store, "a").app
    second = apps.create_app(store, "b").app
    apps.delete_app(store, "b")
    apps.delete_app(store, "a")
    again = apps.create_app(store, "b").app
    assert again.id == second.id + 1 > first.id
    token, _, _ = tokens.issue_token(store, again)
    assert token.endswith(f"-{again.id}")
    store.close()


@pytest.fixture
def sqlite_without_secure_delete(monkeypatch):
    """SQLite as built elsewhere: Debian's defaults secure_delete on, most builds off."""
    connect = sqlite3.connect

    def built_without_secure_delete(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr("qfserve.store.db.sqlite3.connect", built_without_secure_delete)


def test_secure_delete_on_every_connection(tmp_path, sqlite_without_secure_delete):
    store = Store(tmp_path)
    assert store.connection().execute("PRAGMA secure_delete").fetchone()[0] == 1
    store.close()


def test_rotated_secret_leaves_no_trace_in_the_file(tmp_path, sqlite_without_secure_delete):
    store = Store(tmp_path)
    rotated = apps.create_app(store, "a")
    deleted = apps.create_app(store, "b")
    apps.create_app(store, "c")
    apps.rotate_app(store, "a")
    apps.delete_app(store, "b")
    store.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    raw = (tmp_path / DB_NAME).read_bytes()
    for gone in (rotated, deleted):
        assert gone.app.api_key.encode() not in raw and gone.app.access_key.encode() not in raw


def test_files_are_owner_only(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    store = Store(data_dir)
    store.close()
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(data_dir / KEY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data_dir / DB_NAME).st_mode) == 0o600


def test_a_lost_key_is_an_error_not_a_new_key(tmp_path):
    store = Store(tmp_path)
    apps.create_app(store, "a")
    store.close()
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(SecretKeyError, match="missing"):
        Store(tmp_path)
    assert not (tmp_path / KEY_FILE).exists()


def test_key_from_the_environment(tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    store = Store(tmp_path)
    creds = apps.create_app(store, "a")
    store.close()
    assert not (tmp_path / KEY_FILE).exists()
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())  # the wrong key: refused at opening
    with pytest.raises(SecretKeyError, match="not the key"):
        Store(tmp_path)
    assert creds.secret_access_key  # (it was only ever readable with the first key)


def test_a_store_opened_with_another_key_refuses_to_start(tmp_path, monkeypatch):
    """Gateways sharing a database must share the key: a wrong one fails at start, not per signature."""
    from cryptography.fernet import Fernet

    first = Store(tmp_path)
    apps.create_app(first, "a")
    first.close()
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match="not the key it was sealed with"):
        Store(tmp_path)
