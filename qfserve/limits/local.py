"""In-process limiter: a sliding 60 s log of admitted requests per key.

A sliding log rather than fixed minute buckets: no double burst at a bucket edge, and a test (or a
client) never sees the budget refill just because the wall clock crossed a minute boundary.
`admit` and `settle` never await, so on one event loop each runs atomically without a lock.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from qfserve.limits.base import Budget, Limiter, Reservation
from qfserve.protocol.errors import Code, QianfanError

WINDOW_SECONDS = 60.0


@dataclass
class _Entry:
    at: float
    tokens: int
    expired: bool = False


@dataclass
class _Window:
    entries: deque[_Entry] = field(default_factory=deque)
    tokens: int = 0  # sum of entries' tokens, kept so admission is O(1) amortised

    def prune(self, cutoff: float) -> None:
        while self.entries and self.entries[0].at <= cutoff:
            entry = self.entries.popleft()
            entry.expired = True
            self.tokens -= entry.tokens


class _LocalReservation(Reservation):
    def __init__(self, limiter: LocalLimiter, key: str, entry: _Entry, rpm: int, tpm: int):
        self._limiter = limiter
        self._key = key
        self._entry = entry
        self._rpm = rpm
        self._tpm = tpm
        self.budget = limiter._budget(key, rpm, tpm)

    async def settle(self, total_tokens: int) -> Budget:
        window = self._limiter._window(self._key)
        # An entry already out of the window no longer counts anywhere: nothing to correct.
        if not self._entry.expired:
            window.tokens += total_tokens - self._entry.tokens
        self._entry.tokens = total_tokens
        return self._limiter._budget(self._key, self._rpm, self._tpm)


class LocalLimiter(Limiter):
    def __init__(self, *, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        # One window per (service, app) key; keys are bounded by what the store holds.
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str) -> _Window:
        window = self._windows.setdefault(key, _Window())
        window.prune(self._clock() - self.window)
        return window

    def _budget(self, key: str, rpm: int, tpm: int) -> Budget:
        window = self._window(key)
        return Budget(rpm, tpm, rpm - len(window.entries), tpm - window.tokens)

    def _seconds_until(self, entry: _Entry) -> float:
        return max(0.0, entry.at + self.window - self._clock())

    def _over_rpm(self, window: _Window, rpm: int) -> QianfanError:
        # The request fits again once enough of the oldest requests leave the window.
        excess = len(window.entries) - rpm
        wait = self._seconds_until(window.entries[excess]) if 0 <= excess < len(window.entries) else None
        return QianfanError(Code.RATE_LIMIT_RPM, retry_after=wait)

    def _over_tpm(self, window: _Window, tpm: int, prompt_tokens: int) -> QianfanError:
        freed = 0
        for entry in window.entries:
            freed += entry.tokens
            if window.tokens - freed + prompt_tokens <= tpm:
                return QianfanError(Code.RATE_LIMIT_TPM, retry_after=self._seconds_until(entry))
        return QianfanError(Code.RATE_LIMIT_TPM)  # larger than the whole budget: waiting won't help

    async def check_requests(self, key: str, rpm: int) -> None:
        window = self._window(key)
        if len(window.entries) >= rpm:
            raise self._over_rpm(window, rpm)

    async def admit(self, key: str, rpm: int, tpm: int, prompt_tokens: int) -> Reservation:
        window = self._window(key)
        if len(window.entries) >= rpm:
            raise self._over_rpm(window, rpm)
        if window.tokens + prompt_tokens > tpm:
            raise self._over_tpm(window, tpm, prompt_tokens)
        entry = _Entry(self._clock(), prompt_tokens)
        window.entries.append(entry)
        window.tokens += prompt_tokens
        return _LocalReservation(self, key, entry, rpm, tpm)
