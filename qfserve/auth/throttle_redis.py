"""The failed-authentication throttle shared by every gateway on one Redis (issue 11).

Same rule as `FailedAuthThrottle`: a fixed window per key from its first failure; more than
`limit` failures in it and the key is refused (error 18) until the window ends. Failures are
counted in Redis (one Lua script, Redis's clock). The gateway whose count crosses the limit
publishes the block; every gateway keeps the blocks it heard in memory, so checking a request
costs no Redis call. A gateway that starts during a block learns it at the key's next failure.
If Redis is unreachable, failures are counted locally instead (logged), never refused for it.

The interface is `FailedAuthThrottle`'s: `failed(address, credential)` counts one failure for the
address and for the credential id (each on its own) and says whether to answer with the throttled
error; valid credentials never consult it.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.exceptions import RedisError

from qfserve.auth.throttle import FailedAuthThrottle

log = logging.getLogger(__name__)

CHANNEL = "qfserve:auth-blocks"
PREFIX = "qfserve:auth-fail:"

# KEYS[1] the counter; ARGV window ms, limit, key, channel. Returns {count, ms left in the window}.
_RECORD = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if n > tonumber(ARGV[2]) then redis.call('PUBLISH', ARGV[4], left .. ' ' .. ARGV[3]) end
return {n, left}
"""


class RedisFailedAuthThrottle:
    def __init__(self, redis_url: str, limit: int = 20, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._record = self._client.register_script(_RECORD)
        self._blocked: dict[str, float] = {}  # key -> monotonic time the block ends
        self._lock = threading.Lock()
        self._fallback = FailedAuthThrottle(limit, window)
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="auth-blocks", daemon=True)
        self._listener.start()

    @staticmethod
    def _keys(address: str, credential: str | None) -> list[str]:
        return [f"a:{address}"] + ([f"c:{credential}"] if credential else [])

    def _seconds_blocked(self, keys: list[str]) -> float:
        now = time.monotonic()
        with self._lock:
            return max((self._blocked.get(key, now) - now for key in keys), default=0.0)

    def failed(self, address: str, credential: str | None = None) -> bool:
        """Count one failed authentication; True when the caller should get the throttled answer."""
        throttled = self._seconds_blocked(self._keys(address, credential)) > 0
        for key in self._keys(address, credential):
            try:
                count, left = self._record(keys=[PREFIX + key],
                                           args=[int(self.window * 1000), self.limit, key, CHANNEL])
            except RedisError as exc:
                log.warning("auth throttle: Redis unavailable (%s); counting failures locally", exc)
                return self._fallback.failed(address, credential) or throttled
            if count > self.limit:  # block here at once, without waiting for our own message
                self._block(key, left / 1000.0)
                throttled = True
        return throttled

    def throttled(self, address: str, credential: str | None = None) -> bool:
        return (self._seconds_blocked(self._keys(address, credential)) > 0
                or self._fallback.throttled(address, credential))

    def retry_after(self, address: str, credential: str | None = None) -> float:
        return max(self._seconds_blocked(self._keys(address, credential)),
                   self._fallback.retry_after(address, credential))

    def _block(self, key: str, seconds: float) -> None:
        with self._lock:
            self._blocked[key] = time.monotonic() + max(seconds, 0.0)
            if len(self._blocked) > 100_000:  # bounded: drop the blocks that ended
                now = time.monotonic()
                self._blocked = {k: v for k, v in self._blocked.items() if v > now}

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        left, _, key = message["data"].decode().partition(" ")
                        self._block(key, int(left) / 1000.0)
            except (RedisError, ValueError, OSError) as exc:
                log.warning("auth throttle: lost the Redis subscription (%s); retrying", exc)
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except RedisError:
                        pass

    def close(self) -> None:
        self._stop.set()
        self._listener.join(timeout=2)
        self._client.close()


def make_auth_throttle(settings):
    """The local throttle, or the Redis one when the gateway has a Redis (`--redis-url`)."""
    if settings.redis_url:
        return RedisFailedAuthThrottle(settings.redis_url, settings.auth_fail_limit, settings.auth_fail_window)
    return FailedAuthThrottle(settings.auth_fail_limit, settings.auth_fail_window)
