"""Telling a running gateway that the store changed (issue 11), so caches of what the CLI, the console
or another gateway wrote (engine pools) are refreshed within a second, without reading the database
per request.

- SQLite: `PRAGMA data_version` on a connection of our own changes whenever another connection
  commits; checking it four times a second costs microseconds and no disk read.
- PostgreSQL: `LISTEN qfserve_changes`; a trigger on each watched table (schema_history's baseline)
  sends a NOTIFY with every committed change, whoever made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

OnChange = Callable[[], Awaitable[None]]
CHANNEL = "qfserve_changes"


class ChangeWatcher:
    def __init__(self, store, on_change: OnChange, interval: float = 0.25):
        self._store = store
        self._on_change = on_change
        self._interval = interval
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._store.dialect == "postgresql":
            self._thread = threading.Thread(target=self._listen, args=(loop,), name="store-changes", daemon=True)
            self._thread.start()
            self._task = loop.create_task(self._deliver())
        else:
            self._task = loop.create_task(self._poll_sqlite())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 3)
            self._thread = None

    async def _poll_sqlite(self) -> None:
        conn = sqlite3.connect(self._store.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            while True:
                await asyncio.sleep(self._interval)
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != seen:
                    seen = now
                    await self._changed()
        finally:
            conn.close()

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """PostgreSQL: a connection of its own, in a thread, waiting for NOTIFYs; reconnects if lost."""
        import psycopg

        dsn = self._store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Anything may have changed while we were not listening.
                    loop.call_soon_threadsafe(self._pending.set)
                    while not self._stop.is_set():
                        for _notify in conn.notifies(timeout=0.5, stop_after=1):
                            loop.call_soon_threadsafe(self._pending.set)
            except Exception as exc:  # psycopg.Error, OSError: the database went away
                if self._stop.is_set():
                    return
                log.warning("store changes: lost the LISTEN connection (%s); retrying", exc)
                self._stop.wait(1.0)

    async def _deliver(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()  # a burst of NOTIFYs is one refresh
            await self._changed()

    async def _changed(self) -> None:
        try:
            await self._on_change()
        except Exception:  # a failed refresh must not stop watching
            log.exception("refreshing after a store change failed")
