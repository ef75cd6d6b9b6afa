"""The rest of the store on both databases (memories, usage, console, engine pools), the in-place
upgrade of a SQLite data dir made by the numbered SQL migrations, `qfserve db copy` into PostgreSQL,
and change notifications (SQLite data_version, PostgreSQL LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest
from conftest import cli
from pgfixtures import new_database

from qfserve.store import apps, bearer_tokens, console, engines, memories, services, tokens, usage
from qfserve.store.changes import ChangeWatcher
from qfserve.store.copy import row_counts
from qfserve.store.db import DB_NAME, Store, _migrations, _split


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


def remember(store, app_id: int, user: str, slot: str, text: str, cap: int = 10, now: float | None = None):
    memories.save(store, app_id=app_id, api_path="svc", user_id=user, request_id="as-1", round=1,
                  facts=[memories.NewMemory(slot, text, "rules")], max_per_user=cap, now=now)


def fill(store) -> dict:
    """One of everything, through the store's own functions."""
    creds = apps.create_app(store, "a")
    apps.create_app(store, "b")
    token, _, _ = tokens.issue_token(store, creds.app)
    services.publish_service(store, "svc", model="default", profile="ERNIE-Speed-8K", top_k=20, min_p=0.1)
    apps.grant(store, "b", "svc")
    engines.add_pool(store, "gpu", ["http://127.0.0.1:9"], options={"api": "vllm"})
    services.publish_service(store, "remote", model="m", profile="ERNIE-Speed-8K", engine="gpu")
    remember(store, creds.app.id, "u1", "city", "用户住在杭州")
    usage.add_usage(store, [usage.Usage(creds.app.id, "svc", "2026-12-01", 2, 10, 5)])
    usage.add_usage(store, [usage.Usage(creds.app.id, "svc", "2026-12-01", 1, 1, 1)])
    apps.rotate_app(store, "b", grace=3600)  # b's old pair stays valid an hour: a retired credential
    bearer_tokens.issue_bearer_token(store, creds.app, 600)
    console.add_signin_token(store, "sign-in", 600)
    console.add_session(store, "session", "csrf", 3600)
    dataset = console.add_dataset(store, "d", "/tmp/d.jsonl", 3)
    console.add_job(store, "j", dataset.id, "/tmp/out", {"epochs": 1})
    return {"creds": creds, "token": token}  # app_id_high_water, the schema's own row, is filled too


def test_every_table_on_both(store):
    filled = fill(store)
    creds = filled["creds"]
    assert apps.check_client(store, creds.app.api_key, creds.secret_key).name == "a"
    assert tokens.lookup_token(store, filled["token"])[0].name == "a"
    assert services.get_service(store, "remote").engine == "gpu"
    assert services.get_service(store, "svc").min_p == 0.1
    assert engines.get_pool(store, "gpu").options == {"api": "vllm"}
    with pytest.raises(engines.PoolInUse):
        engines.remove_pool(store, "gpu")
    assert [m.text for m in memories.current(store, creds.app.id, "svc", "u1")] == ["用户住在杭州"]
    [day] = usage.usage_on(store, "2026-12-01")
    assert (day.requests, day.prompt_tokens, day.completion_tokens) == (3, 11, 6)  # the upsert adds up
    assert [j.name for j in console.list_jobs(store)] == ["j"]
    counts = row_counts(store)
    assert counts["apps"] == 2 and counts["grants"] == 1 and counts["memories"] == 1


def test_memory_cap_keeps_the_most_recent(store):
    app = apps.create_app(store, "a").app
    for n in range(5):
        remember(store, app.id, "u", f"slot{n}", f"fact {n}", cap=3, now=1000.0 + n)
    kept = sorted(m.text for m in memories.current(store, app.id, "svc", "u"))
    assert kept == ["fact 2", "fact 3", "fact 4"]


def _legacy_sqlite(data_dir, upto: int) -> None:
    """A data dir as the numbered-SQL store made it (before Alembic), with data in it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    for version, _name, sql in _migrations():
        if version <= upto:
            for statement in _split(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO apps (id, name, api_key, secret_key_hash, access_key, secret_access_key, created_at)"
                 " VALUES (1, 'old', 'ak', 'hash', 'iam', 'sak', 1)")
    conn.execute("INSERT INTO tokens (token_hash, app_id, expires_at, created_at) VALUES ('th', 1, 99999999999, 1)")
    conn.execute("INSERT INTO services (api_path, model, adapter, profile, rpm, tpm, safety, created_at)"
                 " VALUES ('svc', 'default', NULL, 'ERNIE-Speed-8K', 5, 50, 'default', 1)")
    conn.execute("INSERT INTO grants (app_id, api_path) VALUES (1, 'svc')")
    if upto >= 2:
        conn.execute("INSERT INTO memories (app_id, api_path, user_id, slot, text, extractor, request_id, round,"
                     " created_at, last_used_at) VALUES (1, 'svc', 'u', 's', 'kept', 'rules', 'as-1', 1, 1.5, 1.5)")
    conn.close()


@pytest.mark.parametrize("upto", [2, 6])
def test_numbered_sqlite_data_dir_upgrades_in_place(tmp_path, upto):
    _legacy_sqlite(tmp_path, upto)
    store = Store(tmp_path)
    try:
        assert store.schema_version() == 8  # stamped at the baseline (7), then brought to head
        old = apps.get_app(store, "old")
        assert old is not None and old.id == 1
        service = services.get_service(store, "svc")
        assert (service.rpm, service.tpm, service.engine) == (5, 50, None)
        assert apps.granted_paths(store, 1) == ["svc"]
        assert store.connection().execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 1
        assert [m.text for m in memories.current(store, 1, "svc", "u")] == ["kept"]
        engines.add_pool(store, "gpu", ["http://127.0.0.1:9"])  # the new table is there
        # 0008 (security, v2) is there whether or not the numbered 0003 ran: ids never reused, v2 keys.
        new = apps.create_app(store, "new")
        assert new.app.id == 2 and apps.find_by_v2_key(store, new.v2_api_key).name == "new"
        apps.delete_app(store, "new")
        assert apps.create_app(store, "newer").app.id == 3
        assert services.get_service(store, "svc").adapter_sha256 is None
        assert store.connection().execute("PRAGMA user_version").fetchone()[0] == 7
    finally:
        store.close()
    again = Store(tmp_path)  # and opening it again changes nothing
    assert again.schema_version() == 8 and apps.get_app(again, "old").id == 1
    again.close()


def test_db_copy_moves_everything_into_postgresql(tmp_path):
    url, drop = new_database()
    try:
        source = Store(tmp_path)
        filled = fill(source)
        expected = row_counts(source)
        source.close()
        result = cli(tmp_path, "db", "copy", "--to", url, "--json")
        copied = json.loads(result.stdout)
        assert copied["rows"] == expected and all(n > 0 for n in expected.values()), copied
        assert "@" not in copied["target"] or "***" in copied["target"]  # no password printed
        target = Store(tmp_path, url)
        try:
            creds = filled["creds"]
            assert apps.check_client(target, creds.app.api_key, creds.secret_key).name == "a"  # hashed secret
            assert tokens.lookup_token(target, filled["token"])[0].name == "a"
            assert services.get_service(target, "remote").engine == "gpu"
            assert apps.granted_paths(target, apps.get_app(target, "b").id) == ["svc"]
            apps.create_app(target, "after-copy")  # the id sequences moved past the copied ids
            console.add_dataset(target, "d2", "/tmp/d2.jsonl", 1)
        finally:
            target.close()
        again = cli(tmp_path, "db", "copy", "--to", url, check=False)  # a second copy is refused
        assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr
    finally:
        drop()


def test_changes_are_heard(store, tmp_path):
    """A write by another connection (another process, in production) reaches the watcher."""
    async def scenario() -> float:
        heard = asyncio.Event()

        async def on_change():
            heard.set()

        watcher = ChangeWatcher(store, on_change)
        await watcher.start()
        try:
            await asyncio.sleep(0.5)  # listening
            heard.clear()
            other = Store(tmp_path, store.url)
            started = time.monotonic()
            engines.add_pool(other, "gpu", ["http://127.0.0.1:9"])
            other.close()
            await asyncio.wait_for(heard.wait(), 10)
            return time.monotonic() - started
        finally:
            await watcher.close()

    asyncio.run(scenario())
