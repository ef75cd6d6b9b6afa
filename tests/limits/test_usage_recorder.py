"""Usage accounting on a real SQLite file: batched writes off the event loop, per app, service and day."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from qfserve.limits.days import QuotaCalendar
from qfserve.limits.usage import UsageRecorder
from qfserve.store import apps
from qfserve.store import usage as usage_store
from qfserve.store.db import Store
from qfserve.store.usage import Usage


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def test_add_usage_adds_up_and_reads_back(store):
    a = apps.create_app(store, "a").app
    b = apps.create_app(store, "b").app
    usage_store.add_usage(store, [Usage(a.id, "svc", "2026-03-01", 2, 30, 10), Usage(b.id, "svc", "2026-03-01", 1, 5, 5)])
    usage_store.add_usage(store, [Usage(a.id, "svc", "2026-03-01", 1, 7, 3), Usage(a.id, "other", "2026-03-01", 4, 1, 1),
                                  Usage(a.id, "svc", "2026-03-02", 9, 9, 9)])
    assert usage_store.usage_on(store, "2026-03-01") == [
        Usage(a.id, "other", "2026-03-01", 4, 1, 1),
        Usage(a.id, "svc", "2026-03-01", 3, 37, 13),
        Usage(b.id, "svc", "2026-03-01", 1, 5, 5),
    ]
    assert usage_store.requests_on(store, a.id, "2026-03-01") == 7
    assert usage_store.requests_on(store, a.id, "2026-03-03") == 0


def test_rows_of_a_deleted_app_are_dropped_not_fatal(store):
    a = apps.create_app(store, "a").app
    b = apps.create_app(store, "b").app
    apps.delete_app(store, "a")
    usage_store.add_usage(store, [Usage(a.id, "svc", "2026-03-01", 1, 1, 1), Usage(b.id, "svc", "2026-03-01", 1, 1, 1)])
    assert [u.app_id for u in usage_store.usage_on(store, "2026-03-01")] == [b.id]
    apps.delete_app(store, "b")  # an app's usage goes with it
    assert usage_store.usage_on(store, "2026-03-01") == []


async def test_recorder_batches_off_the_event_loop(store, monkeypatch):
    a = apps.create_app(store, "a").app
    writers: list[str] = []
    real_add = usage_store.add_usage

    def spy(store_, rows):
        writers.append(threading.current_thread().name)
        real_add(store_, rows)

    monkeypatch.setattr(usage_store, "add_usage", spy)
    recorder = UsageRecorder(store, QuotaCalendar("Asia/Shanghai"), interval=0.05)
    for _ in range(100):
        recorder.record(a.id, "svc", 10, 4)
    recorder.record(a.id, "other", 1, 1)
    assert writers == []  # nothing written on the request path
    for _ in range(100):
        await asyncio.sleep(0.02)
        if writers:
            break
    await recorder.close()
    assert writers and threading.main_thread().name not in writers
    assert len(writers) == 1  # one batch for the 101 requests
    day = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    assert usage_store.usage_on(store, day) == [Usage(a.id, "other", day, 1, 1, 1), Usage(a.id, "svc", day, 100, 1000, 400)]


async def test_recorder_days_are_in_the_quota_zone(store):
    a = apps.create_app(store, "a").app
    clock = datetime(2026, 3, 1, 23, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()  # 15:30 UTC
    recorder = UsageRecorder(store, QuotaCalendar("Asia/Shanghai"), clock=lambda: clock)
    recorder.record(a.id, "svc", 1, 1)
    clock += 3600  # 00:30 in Shanghai: a new quota day, though UTC is still on the 1st
    recorder.record(a.id, "svc", 1, 1)
    await recorder.close()
    assert usage_store.requests_on(store, a.id, "2026-03-01") == 1
    assert usage_store.requests_on(store, a.id, "2026-03-02") == 1


async def test_recorder_keeps_a_batch_whose_write_failed(store, monkeypatch):
    a = apps.create_app(store, "a").app
    recorder = UsageRecorder(store, QuotaCalendar("UTC"), interval=3600)

    def disk_full(*_):
        raise OSError("disk full")

    monkeypatch.setattr(usage_store, "add_usage", disk_full)
    recorder.record(a.id, "svc", 5, 5)
    await recorder.flush()
    monkeypatch.undo()
    recorder.record(a.id, "svc", 1, 1)
    await recorder.close()
    day = QuotaCalendar("UTC").day(time.time())
    assert usage_store.usage_on(store, day) == [Usage(a.id, "svc", day, 2, 6, 6)]
