"""Redis limiter: the same sliding logs as `local`, kept in Redis so several processes share them.

Per (service, app) key, three Redis keys (one hash tag, so they stay on one cluster slot):
  `…:req` sorted set, request id → admission time in ms;
  `…:tok` hash, request id → tokens counted for it;
  `…:sum` running total of those tokens.
Per app, two more (hash tag `app:ID`): `…:qps` sorted set of the last second's admissions, and
`…:day` hash {day, count} for the daily quota.
Each operation is one Lua script, so check-and-count is atomic across processes. Time comes from
Redis (`TIME`), not from the callers, so processes with skewed clocks still share one window and
one day boundary. The day is Redis's time plus the quota time zone's UTC offset, which the caller
sends (on a daylight-saving day the offset in force at the request is used).
"""

from __future__ import annotations

import logging
import secrets
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from qfserve.limits.base import AppAdmission, AppQuota, Budget, LimitRefused, Limiter, Reservation
from qfserve.limits.days import QuotaCalendar
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

# ARGV: window ms, rpm, tpm, prompt tokens, request id. Returns {verdict, requests, tokens, retry ms}:
# verdict 0 admitted, 1 over RPM, 2 over TPM; a refusal writes nothing but the pruning, and says
# when the window admits again (the oldest request leaves it; enough tokens leave it; for a prompt
# larger than the whole TPM, a window).
_ADMIT = _PRUNE + """
local rpm, tpm, prompt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if count >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, count, used, tonumber(oldest[2]) + window - now}
end
if used + prompt > tpm then
  local needed, freed, retry = used + prompt - tpm, 0, window
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    freed = freed + (tonumber(redis.call('HGET', KEYS[2], entries[i])) or 0)
    if freed >= needed then
      retry = tonumber(entries[i + 1]) + window - now
      break
    end
  end
  return {2, count, used, retry}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('HSET', KEYS[2], ARGV[5], prompt)
used = redis.call('INCRBY', KEYS[3], prompt)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window) end
return {0, count + 1, used, 0}
"""

# KEYS: the app's qps sorted set, its day hash. ARGV: qps, daily (0: unlimited), UTC offset in s,
# admission id. Returns {verdict, count, retry ms, day}: verdict 0 admitted, 1 over QPS, 2 over the
# daily quota (checked first: a spent day must not answer the retryable 18); count is the QPS window's
# size for 1, today's count otherwise. A refusal writes nothing but the pruning.
_ADMIT_APP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local qps, daily, offset = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local day = math.floor((math.floor(now / 1000) + offset) / 86400)
local used = 0
if daily > 0 then
  if tonumber(redis.call('HGET', KEYS[2], 'day') or '-1') == day then
    used = tonumber(redis.call('HGET', KEYS[2], 'count') or '0')
  end
  if used >= daily then return {2, used, ((day + 1) * 86400 - offset) * 1000 - now, day} end
end
if qps > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1000)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= qps then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, count, tonumber(oldest[2]) + 1000 - now, day}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], 1000)
end
if daily > 0 then
  if tonumber(redis.call('HGET', KEYS[2], 'day') or '-1') ~= day then
    redis.call('HSET', KEYS[2], 'day', day, 'count', 0)
  end
  used = redis.call('HINCRBY', KEYS[2], 'count', 1)
  redis.call('EXPIRE', KEYS[2], 2 * 86400)
end
return {0, used, 0, day}
"""

# KEYS as _ADMIT_APP. ARGV: admission id, the day it was counted on ('' if the daily quota was not counted).
_RELEASE_APP = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'day') == ARGV[2] then
  redis.call('HINCRBY', KEYS[2], 'count', -1)
end
return 0
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


# ARGV: window ms. Returns {requests in the window, tokens, ms until the oldest leaves it}.
_COUNT = _PRUNE + """
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local retry = 0
if #oldest > 0 then retry = tonumber(oldest[2]) + window - now end
return {count, used, retry}
"""


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


class _RedisAdmission(AppAdmission):
    def __init__(self, limiter: RedisLimiter, keys: list[str], admission_id: str, day: str):
        self._limiter, self._keys, self._id, self._day = limiter, keys, admission_id, day

    async def release(self) -> None:
        try:
            await self._limiter._release_app(keys=self._keys, args=[self._id, self._day])
        except RedisError as exc:
            raise _unavailable(exc) from exc


class RedisLimiter(Limiter):
    def __init__(self, url: str, *, window: float = WINDOW_SECONDS, prefix: str = "qfserve:rl",
                 calendar: QuotaCalendar | None = None):
        self._client = aioredis.Redis.from_url(url)
        self._window_ms = int(window * 1000)
        self._prefix = prefix
        self.calendar = calendar or QuotaCalendar()
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._count = self._client.register_script(_COUNT)
        self._admit_app_script = self._client.register_script(_ADMIT_APP)
        self._release_app = self._client.register_script(_RELEASE_APP)

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}:{{{key}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:sum"]

    async def check_requests(self, key: str, rpm: int, tpm: int) -> None:
        try:
            count, used, retry_ms = await self._count(keys=self._keys(key), args=[self._window_ms])
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if int(count) >= rpm:
            budget = Budget(rpm, tpm, rpm - int(count), tpm - int(used))
            raise LimitRefused(Code.RATE_LIMIT_RPM, "rpm", int(retry_ms) / 1000, budget)

    async def admit(self, key: str, rpm: int, tpm: int, prompt_tokens: int) -> Reservation:
        keys = self._keys(key)
        request_id = secrets.token_hex(8)
        try:
            verdict, count, used, retry_ms = await self._admit(
                keys=keys, args=[self._window_ms, rpm, tpm, prompt_tokens, request_id]
            )
        except RedisError as exc:
            raise _unavailable(exc) from exc
        budget = Budget(rpm, tpm, rpm - int(count), tpm - int(used))
        if verdict == 1:
            raise LimitRefused(Code.RATE_LIMIT_RPM, "rpm", int(retry_ms) / 1000, budget)
        if verdict == 2:
            raise LimitRefused(Code.RATE_LIMIT_TPM, "tpm", int(retry_ms) / 1000, budget)
        return _RedisReservation(self, keys, request_id, rpm, tpm, budget)

    async def _admit_app(self, quota: AppQuota) -> AppAdmission:
        base = f"{self._prefix}:{{app:{quota.app_id}}}"
        keys = [f"{base}:qps", f"{base}:day"]
        admission_id = secrets.token_hex(8)
        offset = self.calendar.utc_offset(time.time())
        try:
            verdict, _count, retry_ms, day = await self._admit_app_script(
                keys=keys, args=[max(0, quota.qps), max(0, quota.daily), offset, admission_id]
            )
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if verdict == 2:
            raise LimitRefused(Code.DAILY_LIMIT, "daily", int(retry_ms) / 1000)
        if verdict == 1:
            raise LimitRefused(Code.QPS_LIMIT, "qps", int(retry_ms) / 1000)
        return _RedisAdmission(self, keys, admission_id, str(int(day)) if quota.daily > 0 else "")

    async def close(self) -> None:
        # `aclose` arrived in redis-py 5.0.1; `close` is its deprecated name before that.
        close = getattr(self._client, "aclose", None) or self._client.close
        await close()
