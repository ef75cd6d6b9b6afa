"""Request limits: per-app quotas (QPS, requests a day), per (service, app) RPM/TPM, and the server's
ceiling on requests in flight. Pick a limiter backend with `make_limiter`."""

from __future__ import annotations

from typing import Callable

from qfserve.limits.base import AppAdmission, AppQuota, Budget, LimitRefused, Limiter, Reservation, limit_key
from qfserve.limits.days import DEFAULT_TIMEZONE, QuotaCalendar

__all__ = ["AppAdmission", "AppQuota", "Budget", "LimitRefused", "Limiter", "Reservation", "limit_key",
           "make_limiter", "BACKENDS", "QuotaCalendar", "DEFAULT_TIMEZONE"]

BACKENDS = ("local", "redis")


def make_limiter(backend: str, redis_url: str | None = None, *, calendar: QuotaCalendar | None = None,
                 daily_seed: Callable[[int, str], int] | None = None) -> Limiter:
    """`local`: this process only. `redis`: shared by every process pointed at the same Redis.

    `calendar` sets the daily quota's time zone. `daily_seed(app_id, day)` gives the local backend
    the requests already counted today (after a restart); Redis keeps its own count.
    """
    if backend == "local":
        from qfserve.limits.local import LocalLimiter

        return LocalLimiter(calendar=calendar, daily_seed=daily_seed)
    if backend == "redis":
        if not redis_url:
            raise ValueError("the redis limiter backend needs a redis URL (e.g. redis://127.0.0.1:6379/0)")
        # Imported here so that the local backend works without the redis client installed.
        from qfserve.limits.redis import RedisLimiter

        return RedisLimiter(redis_url, calendar=calendar)
    raise ValueError(f"unknown limiter backend {backend!r}: use one of {', '.join(BACKENDS)}")
