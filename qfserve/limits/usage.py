"""Usage accounting off the request path: counts gathered in memory, written to the store in batches.

`record` is a dict update on the event loop; a background task adds the batch to SQLite every
`interval` seconds in a worker thread, so no request ever waits for a database write. If a write
fails, the batch is kept and retried with the next one. `close` writes what is left (at shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from qfserve.limits.days import QuotaCalendar
from qfserve.store import usage as usage_store
from qfserve.store.db import Store

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0


class UsageRecorder:
    def __init__(self, store: Store, calendar: QuotaCalendar, *, interval: float = FLUSH_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.calendar = calendar
        self.interval = interval
        self._clock = clock
        # (app id, api_path, day) -> [requests, prompt tokens, completion tokens]
        self._pending: dict[tuple[int, str, str], list[int]] = {}
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    def record(self, app_id: int, api_path: str, prompt_tokens: int, completion_tokens: int,
               requests: int = 1) -> None:
        """Count one answered request (on the event loop; never blocks). `requests=0` adds tokens
        spent later on behalf of a request already counted (memory extraction)."""
        key = (app_id, api_path, self.calendar.day(self._clock()))
        counts = self._pending.setdefault(key, [0, 0, 0])
        counts[0] += requests
        counts[1] += prompt_tokens
        counts[2] += completion_tokens
        if self._task is None and not self._stopping.is_set():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # Woken by `close` rather than cancelled, so a write in progress is never cut off.
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            await self.flush()

    async def flush(self) -> None:
        """Write what was recorded so far."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            rows = [usage_store.Usage(app_id, api_path, day, *counts)
                    for (app_id, api_path, day), counts in batch.items()]
            try:
                await asyncio.to_thread(usage_store.add_usage, self.store, rows)
            except Exception as exc:
                log.warning("usage accounting: write failed, will retry: %r", exc)
                for key, counts in batch.items():  # put back, adding what came in meanwhile
                    pending = self._pending.setdefault(key, [0, 0, 0])
                    for i, value in enumerate(counts):
                        pending[i] += value

    async def close(self) -> None:
        """Stop the background writer and write what is left."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
