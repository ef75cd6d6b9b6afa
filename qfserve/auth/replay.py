"""Seen bce-auth-v1 signatures, so a captured signed request can't be sent again while it is valid.

`first_use(key, ttl)` is True the first time a key is offered within its ttl, False after. Two
backends, picked like the rate limiter's: in this process, or in Redis so that every gateway behind
one address shares what it has seen (a replay sent to another gateway is refused too).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

from qfserve.protocol.errors import Code, QianfanError

log = logging.getLogger(__name__)


class SeenSignatures(abc.ABC):
    @abc.abstractmethod
    async def first_use(self, key: str, ttl: int) -> bool:
        """Remember `key` for `ttl` seconds; False if it was already remembered."""

    @abc.abstractmethod
    async def forget(self, key: str) -> None:
        """Accept `key` once more: its request was refused before doing anything, with a code the
        client retries by resending it (possibly within the same second, so byte for byte)."""

    async def close(self) -> None:
        return None


class LocalSeenSignatures(SeenSignatures):
    """In-process. Bounded: past `max_entries` the oldest are forgotten first (logged, as a replay
    of those becomes possible again until they expire)."""

    def __init__(self, max_entries: int = 200_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()  # in insertion order
        self._lock = threading.Lock()
        self._warned = False

    async def first_use(self, key: str, ttl: int) -> bool:
        now = self._clock()
        with self._lock:
            expires = self._expiry.get(key)
            if expires is not None and expires > now:
                return False
            self._expiry[key] = now + ttl
            self._expiry.move_to_end(key)
            if len(self._expiry) > self.max_entries:
                self._prune(now)
        return True

    async def forget(self, key: str) -> None:
        with self._lock:
            self._expiry.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, expires in self._expiry.items() if expires <= now]:
            del self._expiry[key]
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)
            if not self._warned:
                self._warned = True
                log.warning("more than %d signatures seen within their validity: forgetting the oldest; "
                            "use --limiter redis to keep them all", self.max_entries)

    def __len__(self) -> int:
        return len(self._expiry)


class RedisSeenSignatures(SeenSignatures):
    def __init__(self, url: str, prefix: str = "qfserve:sig"):
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(url)
        self._prefix = prefix

    async def first_use(self, key: str, ttl: int) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(await self._client.set(f"{self._prefix}:{key}", b"1", nx=True, ex=ttl))
        except RedisError as exc:
            # Fail closed with the retryable code, as the Redis rate limiter does.
            log.warning("seen-signature cache: redis unavailable: %s", exc)
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from exc

    async def forget(self, key: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._client.delete(f"{self._prefix}:{key}")
        except RedisError as exc:  # the retry is then refused 14: logged, not fatal
            log.warning("seen-signature cache: redis unavailable: %s", exc)

    async def close(self) -> None:
        close = getattr(self._client, "aclose", None) or self._client.close
        await close()


def make_seen_signatures(redis_url: str | None) -> SeenSignatures:
    """Redis when one is configured (gateways sharing it then share what they have seen); else this process."""
    if redis_url:
        return RedisSeenSignatures(redis_url)
    return LocalSeenSignatures()
