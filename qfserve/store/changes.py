"""Telling a running gateway that the store changed (issue 11), so caches of what the CLI or another
gateway wrote (engine pools) are refreshed within a second, without reading the database per request.

SQLite: `PRAGMA data_version` on a connection of our own changes whenever any other connection
commits; checking it costs microseconds and no disk read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

OnChange = Callable[[], Awaitable[None]]


class ChangeWatcher:
    def __init__(self, store, on_change: OnChange, interval: float = 0.25):
        self._store = store
        self._on_change = on_change
        self._interval = interval
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
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

    async def _changed(self) -> None:
        try:
            await self._on_change()
        except Exception:  # a failed refresh must not stop watching
            log.exception("refreshing after a store change failed")
