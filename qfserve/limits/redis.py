"""Redis limiter: the same sliding 60 s log as `local`, kept in Redis so several processes share it.

Per key, three Redis keys (one hash tag, so they stay on one cluster slot):
  `…:req` sorted set, request id → admission time in ms;
  `…:tok` hash, request id → tokens counted for it;
  `…:sum` running total of those tokens.
Each operation is one Lua script, so check-and-count is atomic across processes. Time comes from
Redis (`TIME`), not from the callers, so processes with skewed clocks still share one window.
"""

from __future__ import annotations

import logging
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from qfserve.limits.base import Budget, Limiter, Reservation
from qfserve.protocol.errors import Code, QianfanError

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0

# Shared prologue: drop requests older than the window and their tokens. ARGV[1] = window in ms.
_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cutoff = now - window
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #expired > 0 then
  local freed = 0
  for _, id in ipairs(expired) do
    freed = freed + (tonumber(redis.call('HGET', KEYS[2], id)) or 0)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  redis.call('DECRBY', KEYS[3], freed)
end
"""

# After _PRUNE, with `count` requests in the window and ARGV[2] = rpm: ms until one more fits, or -1.
_RPM_WAIT = """
local function rpm_wait(count, rpm)
  local nth = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  if nth[2] then return tonumber(nth[2]) + window - now end
  return -1
end
"""

# ARGV: window ms, rpm, tpm, prompt tokens, request id. Returns {verdict, requests, tokens, wait ms}:
# verdict 0 admitted, 1 over RPM, 2 over TPM; a refusal writes nothing but the pruning.
_ADMIT = _PRUNE + _RPM_WAIT + """
local rpm, tpm, prompt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if count >= rpm then return {1, count, used, rpm_wait(count, rpm)} end
if used + prompt > tpm then return {2, count, used} end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('HSET', KEYS[2], ARGV[5], prompt)
used = redis.call('INCRBY', KEYS[3], prompt)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window) end
return {0, count + 1, used}
"""

# ARGV: window ms, request id, real total tokens. Returns {requests, tokens}.
_SETTLE = _PRUNE + """
local old = redis.call('HGET', KEYS[2], ARGV[2])
if old then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('INCRBY', KEYS[3], tonumber(ARGV[3]) - tonumber(old))
end
return {redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""


# ARGV: window ms, rpm. Returns {requests in the window, ms until one more fits (-1: it fits)}.
_COUNT = _PRUNE + _RPM_WAIT + """
local count = redis.call('ZCARD', KEYS[1])
local rpm = tonumber(ARGV[2])
if count >= rpm then return {count, rpm_wait(count, rpm)} end
return {count, -1}
"""


def _seconds(wait_ms) -> float | None:
    return int(wait_ms) / 1000 if int(wait_ms) >= 0 else None


def _unavailable(exc: RedisError) -> QianfanError:
    # Failing closed with a retryable code: the SDK backs off and retries while Redis recovers.
    log.warning("rate limiter: redis unavailable: %s", exc)
    return QianfanError(Code.SERVICE_UNAVAILABLE)


class _RedisReservation(Reservation):
    def __init__(self, limiter: RedisLimiter, keys: list[str], request_id: str, rpm: int, tpm: int, budget: Budget):
        self._limiter = limiter
        self._keys = keys
        self._id = request_id
        self._rpm = rpm
        self._tpm = tpm
        self.budget = budget

    async def settle(self, total_tokens: int) -> Budget:
        try:
            count, used = await self._limiter._settle(keys=self._keys, args=[self._limiter._window_ms, self._id, total_tokens])
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return Budget(self._rpm, self._tpm, self._rpm - int(count), self._tpm - int(used))


class RedisLimiter(Limiter):
    def __init__(self, url: str, *, window: float = WINDOW_SECONDS, prefix: str = "qfserve:rl"):
        self._client = aioredis.Redis.from_url(url)
        self._window_ms = int(window * 1000)
        self._prefix = prefix
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._count = self._client.register_script(_COUNT)

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}:{{{key}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:sum"]

    async def check_requests(self, key: str, rpm: int) -> None:
        try:
            count, wait = await self._count(keys=self._keys(key), args=[self._window_ms, rpm])
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if int(count) >= rpm:
            raise QianfanError(Code.RATE_LIMIT_RPM, retry_after=_seconds(wait))

    async def admit(self, key: str, rpm: int, tpm: int, prompt_tokens: int) -> Reservation:
        keys = self._keys(key)
        request_id = secrets.token_hex(8)
        try:
            verdict, count, used, *wait = await self._admit(
                keys=keys, args=[self._window_ms, rpm, tpm, prompt_tokens, request_id]
            )
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if verdict == 1:
            raise QianfanError(Code.RATE_LIMIT_RPM, retry_after=_seconds(wait[0]))
        if verdict == 2:
            raise QianfanError(Code.RATE_LIMIT_TPM)
        budget = Budget(rpm, tpm, rpm - int(count), tpm - int(used))
        return _RedisReservation(self, keys, request_id, rpm, tpm, budget)

    async def close(self) -> None:
        # `aclose` arrived in redis-py 5.0.1; `close` is its deprecated name before that.
        close = getattr(self._client, "aclose", None) or self._client.close
        await close()
