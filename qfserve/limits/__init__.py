"""Request/token limits per (service, app): pick a backend with `make_limiter`."""

from __future__ import annotations

from qfserve.limits.base import Budget, Limiter, Reservation, limit_key

__all__ = ["Budget", "Limiter", "Reservation", "limit_key", "make_limiter", "BACKENDS"]

BACKENDS = ("local", "redis")


def make_limiter(backend: str, redis_url: str | None = None) -> Limiter:
    """`local`: this process only. `redis`: shared by every process pointed at the same Redis."""
    if backend == "local":
        from qfserve.limits.local import LocalLimiter

        return LocalLimiter()
    if backend == "redis":
        if not redis_url:
            raise ValueError("the redis limiter backend needs a redis URL (e.g. redis://127.0.0.1:6379/0)")
        # Imported here so that the local backend works without the redis client installed.
        from qfserve.limits.redis import RedisLimiter

        return RedisLimiter(redis_url)
    raise ValueError(f"unknown limiter backend {backend!r}: use one of {', '.join(BACKENDS)}")
