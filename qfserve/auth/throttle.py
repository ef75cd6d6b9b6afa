"""Slow down credential guessing, without ever refusing a caller whose credentials are valid.

Credentials are checked first. Only a *failed* check consults the throttle: once an address, or a
credential id (an API Key, an IAM Access Key, the app an access token names), has more than `limit`
failures in its window, further failures for it are answered with the throttled error instead of
the plain one. A valid request is never refused, so forging a victim's address or hammering a
victim's API Key can't lock the victim out; and counting per credential id as well as per address
catches guessing spread over many addresses.

The addresses are what the HTTP layer reports: the peer, or the client named by
`X-Forwarded-For` only when the peer is a configured trusted proxy (see `qfserve.api.http_server`).

Fixed window per key, starting at its first failure. The throttled chat error is 18 ("qps limit"),
which the official SDK retries with backoff, with Retry-After at the window's end. This is not the
per-app QPS quota (qfserve.limits), which also answers 18: metrics tell them apart by reason
(`auth_failures` here, `qps` there). Memory is bounded: at most `max_keys` windows per
kind are kept, oldest dropped first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

log = logging.getLogger(__name__)


class _Windows:
    """Failure counts per key, each in a fixed window from its first failure."""

    def __init__(self, limit: int, window: float, max_keys: int, clock: Callable[[], float]):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        # key -> [window start, failures]; ordered by window start, so the oldest are in front.
        self.entries: OrderedDict[str, list] = OrderedDict()

    def over(self, key: str) -> bool:
        entry = self.entries.get(key)
        if entry is None:
            return False
        if self._clock() - entry[0] >= self.window:
            del self.entries[key]
            return False
        return entry[1] > self.limit

    def seconds_left(self, key: str) -> float:
        entry = self.entries.get(key)
        return max(0.0, entry[0] + self.window - self._clock()) if entry is not None else 0.0

    def add(self, key: str) -> int:
        now = self._clock()
        entry = self.entries.get(key)
        if entry is None or now - entry[0] >= self.window:
            self.entries[key] = entry = [now, 0]
            self.entries.move_to_end(key)
            self._evict(now)
        entry[1] += 1
        return entry[1]

    def _evict(self, now: float) -> None:
        while self.entries:
            oldest_start = next(iter(self.entries.values()))[0]
            if now - oldest_start < self.window and len(self.entries) <= self.max_keys:
                return
            self.entries.popitem(last=False)


class FailedAuthThrottle:
    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.window = window
        self._addresses = _Windows(limit, window, max_keys, clock)
        self._credentials = _Windows(limit, window, max_keys, clock)
        # Auth may run in a threadpool (sync dependencies) as well as on the event loop.
        self._lock = threading.Lock()

    def failed(self, address: str, credential: str | None = None) -> bool:
        """Record one failed authentication; True when the caller should now get the throttled answer.

        `credential` identifies what was tried (e.g. "ak:<API Key>"), None when nothing was named.
        """
        with self._lock:
            throttled = self._addresses.over(address) or bool(credential and self._credentials.over(credential))
            count = self._addresses.add(address)
            if credential:
                count = max(count, self._credentials.add(credential))
        if count == self.limit + 1:
            log.warning("failed authentications over the limit (%d in %.0f s): address %s, credential %s",
                        self.limit, self.window, address, credential or "-")
        return throttled or count > self.limit

    def retry_after(self, address: str, credential: str | None = None) -> float:
        """Seconds until the windows that throttle this address or credential end (Retry-After)."""
        with self._lock:
            left = [self._addresses.seconds_left(address) if self._addresses.over(address) else 0.0]
            if credential and self._credentials.over(credential):
                left.append(self._credentials.seconds_left(credential))
        return max(left)

    def throttled(self, address: str, credential: str | None = None) -> bool:
        """Whether a failure from this address or for this credential would be throttled now."""
        with self._lock:
            return self._addresses.over(address) or bool(credential and self._credentials.over(credential))
