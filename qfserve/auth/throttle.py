"""Slow down credential guessing: an address with too many failed authentications is refused for a while.

Fixed window per address, starting at its first failure. Refusal is error 18 ("qps limit"), which the
official SDK retries with backoff, so an honest client with a transient mistake recovers by itself.
This is not the per-app QPS quota (qfserve.limits), which also answers 18: the metrics tell them
apart by reason (`auth_failures` here, `qps` there). Retry-After says when the window ends.
Memory is bounded: at most `max_addresses` windows are kept, oldest dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

from qfserve.limits.base import LimitRefused
from qfserve.protocol.errors import Code


class FailedAuthThrottle:
    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        # address -> [window start, failures]; ordered by window start, so the oldest are in front.
        self._failures: OrderedDict[str, list] = OrderedDict()
        # Auth may run in a threadpool (sync dependencies) as well as on the event loop.
        self._lock = threading.Lock()

    def check(self, addr: str) -> None:
        """Raise LimitRefused 18 while `addr` has more than `limit` failures in its current window."""
        with self._lock:
            entry = self._failures.get(addr)
            if entry is None:
                return
            if self._clock() - entry[0] >= self.window:
                del self._failures[addr]
                return
            if entry[1] > self.limit:
                raise LimitRefused(Code.QPS_LIMIT, "auth_failures", entry[0] + self.window - self._clock())

    def record_failure(self, addr: str) -> None:
        with self._lock:
            now = self._clock()
            entry = self._failures.get(addr)
            if entry is None or now - entry[0] >= self.window:
                self._failures[addr] = [now, 1]
                self._failures.move_to_end(addr)
                self._evict(now)
            else:
                entry[1] += 1

    def _evict(self, now: float) -> None:
        while self._failures:
            oldest_start = next(iter(self._failures.values()))[0]
            if now - oldest_start < self.window and len(self._failures) <= self.max_addresses:
                return
            self._failures.popitem(last=False)
