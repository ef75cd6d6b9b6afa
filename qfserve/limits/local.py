"""In-process limiter: a sliding 60 s log of admitted requests per key, a sliding 1 s log per app
for QPS, and a count per app for today.

A sliding log rather than fixed minute buckets: no double burst at a bucket edge, and a test (or a
client) never sees the budget refill just because the wall clock crossed a minute boundary.
The checks and counts never await, so on one event loop each runs atomically without a lock.
The day's counts live in this process: `daily_seed` (the store's usage table) restores an app's
count for today the first time this process sees the app that day, so a restart does not reset it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from qfserve.limits.base import AppAdmission, AppQuota, Budget, LimitRefused, Limiter, Reservation
from qfserve.limits.days import QuotaCalendar
from qfserve.protocol.errors import Code

WINDOW_SECONDS = 60.0
QPS_WINDOW_SECONDS = 1.0


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

    def seconds_until_tokens_free(self, needed: int, now: float, window: float) -> float:
        """When enough entries have left the window to free `needed` tokens (a whole window if never)."""
        freed = 0
        for entry in self.entries:
            freed += entry.tokens
            if freed >= needed:
                return entry.at + window - now
        return window


class _Stamp:
    """One admission in an app's QPS window; compared by identity, so `release` removes exactly it."""

    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = at


@dataclass
class _Today:
    day: str
    count: int


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


class _LocalAdmission(AppAdmission):
    def __init__(self, limiter: LocalLimiter, app_id: int, qps_entry: _Stamp | None, day: str | None):
        self._limiter, self._app_id, self._qps_entry, self._day = limiter, app_id, qps_entry, day

    async def release(self) -> None:
        limiter, app_id = self._limiter, self._app_id
        if self._qps_entry is not None:
            try:
                limiter._qps[app_id].remove(self._qps_entry)
            except (KeyError, ValueError):
                pass  # already out of the window
        today = limiter._today.get(app_id)
        if self._day is not None and today is not None and today.day == self._day:
            today.count -= 1
        self._qps_entry = self._day = None


class LocalLimiter(Limiter):
    def __init__(
        self,
        *,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        calendar: QuotaCalendar | None = None,
        wall_clock: Callable[[], float] = time.time,
        daily_seed: Callable[[int, str], int] | None = None,
    ):
        self.window = window
        self._clock = clock
        self.calendar = calendar or QuotaCalendar()
        self._wall_clock = wall_clock
        self._daily_seed = daily_seed  # (app id, day) -> requests already counted; runs in a thread
        # One window per (service, app) key; keys are bounded by what the store holds.
        self._windows: dict[str, _Window] = {}
        # Per app: admissions in the last second, and today's count.
        self._qps: dict[int, deque[_Stamp]] = {}
        self._today: dict[int, _Today] = {}

    def _window(self, key: str) -> _Window:
        window = self._windows.setdefault(key, _Window())
        window.prune(self._clock() - self.window)
        return window

    def _budget(self, key: str, rpm: int, tpm: int) -> Budget:
        window = self._window(key)
        return Budget(rpm, tpm, rpm - len(window.entries), tpm - window.tokens)

    def _refuse_if_full(self, key: str, rpm: int, tpm: int) -> None:
        window = self._window(key)
        if len(window.entries) >= rpm:
            retry = window.entries[0].at + self.window - self._clock()
            raise LimitRefused(Code.RATE_LIMIT_RPM, "rpm", retry, self._budget(key, rpm, tpm))

    async def check_requests(self, key: str, rpm: int, tpm: int) -> None:
        self._refuse_if_full(key, rpm, tpm)

    async def admit(self, key: str, rpm: int, tpm: int, prompt_tokens: int) -> Reservation:
        self._refuse_if_full(key, rpm, tpm)
        window = self._window(key)
        if window.tokens + prompt_tokens > tpm:
            needed = window.tokens + prompt_tokens - tpm
            retry = window.seconds_until_tokens_free(needed, self._clock(), self.window)
            raise LimitRefused(Code.RATE_LIMIT_TPM, "tpm", retry, self._budget(key, rpm, tpm))
        entry = _Entry(self._clock(), prompt_tokens)
        window.entries.append(entry)
        window.tokens += prompt_tokens
        return _LocalReservation(self, key, entry, rpm, tpm)

    async def _admit_app(self, quota: AppQuota) -> AppAdmission:
        app_id = quota.app_id
        day = None
        if quota.daily > 0:
            day = self.calendar.day(self._wall_clock())
            today = self._today.get(app_id)
            if (today is None or today.day != day) and self._daily_seed is not None:
                seeded = await asyncio.to_thread(self._daily_seed, app_id, day)
                today = self._today.get(app_id)  # another admission may have seeded it meanwhile
                if today is None or today.day != day:
                    self._today[app_id] = _Today(day, seeded)
            today = self._today.get(app_id)
            if today is None or today.day != day:
                today = self._today[app_id] = _Today(day, 0)
            if today.count >= quota.daily:
                retry = self.calendar.seconds_to_next_day(self._wall_clock())
                raise LimitRefused(Code.DAILY_LIMIT, "daily", retry)
        entry = None
        if quota.qps > 0:
            now = self._clock()
            recent = self._qps.setdefault(app_id, deque())
            while recent and recent[0].at <= now - QPS_WINDOW_SECONDS:
                recent.popleft()
            if len(recent) >= quota.qps:
                raise LimitRefused(Code.QPS_LIMIT, "qps", recent[0].at + QPS_WINDOW_SECONDS - now)
            entry = _Stamp(now)
            recent.append(entry)
        if day is not None:
            self._today[app_id].count += 1
        return _LocalAdmission(self, app_id, entry, day)
