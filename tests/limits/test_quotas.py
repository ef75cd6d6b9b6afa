"""Per-app quotas (QPS, requests a day) and the refusals' headers, on both limiter backends."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from qfserve.limits import AppQuota, LimitRefused, QuotaCalendar, make_limiter
from qfserve.limits.local import LocalLimiter
from qfserve.protocol.errors import QianfanError

QPS, DAILY, RPM, TPM = 18, 17, 336501, 336502
_app_ids = itertools.count(10_000, 10)  # steps of 10: a test may use app_id + 1


@pytest.fixture(params=["local", "redis"])
def backend(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    @asynccontextmanager
    async def open_limiter(**kwargs):
        limiter = make_limiter(request.param, url, **kwargs)
        try:
            yield limiter
        finally:
            await limiter.close()

    return open_limiter


@pytest.fixture
def app_id():
    # The Redis server is shared by the session: every test gets an app of its own.
    return next(_app_ids)


async def refusal(coroutine) -> LimitRefused | object:
    try:
        return await coroutine
    except LimitRefused as exc:
        return exc


# --- QPS -------------------------------------------------------------------------------------------


async def test_qps_admits_exactly_qps_under_concurrency(backend, app_id):
    async with backend() as limiter:
        results = await asyncio.gather(*(refusal(limiter.admit_app(AppQuota(app_id, qps=3))) for _ in range(12)))
    refused = [r for r in results if isinstance(r, LimitRefused)]
    assert len(results) - len(refused) == 3
    assert {(r.code, r.message, r.reason) for r in refused} == {(QPS, "Open api qps request limit reached", "qps")}
    # The window is one second: the oldest admission leaves it within a second.
    assert all(0 < r.retry_after <= 1.0 for r in refused)
    assert {r.headers["Retry-After"] for r in refused} == {"1"}


async def test_qps_window_slides(backend, app_id):
    async with backend() as limiter:
        await limiter.admit_app(AppQuota(app_id, qps=1))
        assert isinstance(await refusal(limiter.admit_app(AppQuota(app_id, qps=1))), LimitRefused)
        await asyncio.sleep(1.05)
        await limiter.admit_app(AppQuota(app_id, qps=1))


async def test_release_gives_back_qps_and_daily(backend, app_id):
    quota = AppQuota(app_id, qps=1, daily=1)
    async with backend() as limiter:
        admission = await limiter.admit_app(quota)
        assert (await refusal(limiter.admit_app(quota))).code == DAILY
        await admission.release()
        await limiter.admit_app(quota)  # both the second's slot and the day's request came back


async def test_unlimited_app_touches_nothing(backend, app_id):
    async with backend() as limiter:
        for _ in range(50):
            await limiter.admit_app(AppQuota(app_id))


# --- daily -----------------------------------------------------------------------------------------


async def test_daily_quota_refuses_until_next_local_midnight(backend, app_id):
    calendar = QuotaCalendar("Asia/Shanghai")
    async with backend(calendar=calendar) as limiter:
        for _ in range(3):
            await limiter.admit_app(AppQuota(app_id, daily=3))
        refused = await refusal(limiter.admit_app(AppQuota(app_id, daily=3)))
    assert (refused.code, refused.message, refused.reason) == (DAILY, "Open api daily request limit reached", "daily")
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    assert abs(refused.retry_after - (midnight - now).total_seconds()) < 5
    assert int(refused.headers["Retry-After"]) == pytest.approx(refused.retry_after, abs=1)


async def test_spent_day_answers_17_not_the_retryable_18(backend, app_id):
    quota = AppQuota(app_id, qps=1, daily=1)
    async with backend() as limiter:
        await limiter.admit_app(quota)
        assert (await refusal(limiter.admit_app(quota))).code == DAILY


async def test_daily_refusal_consumes_nothing(backend, app_id):
    async with backend() as limiter:
        await limiter.admit_app(AppQuota(app_id, daily=1))
        for _ in range(5):
            assert (await refusal(limiter.admit_app(AppQuota(app_id, daily=1)))).code == DAILY
        # raising the quota by one admits exactly one more: the refusals were not counted
        await limiter.admit_app(AppQuota(app_id, daily=2))
        assert (await refusal(limiter.admit_app(AppQuota(app_id, daily=2)))).code == DAILY


async def test_qps_refusal_does_not_spend_the_day(backend, app_id):
    async with backend() as limiter:
        await limiter.admit_app(AppQuota(app_id, qps=1, daily=2))
        for _ in range(5):
            assert (await refusal(limiter.admit_app(AppQuota(app_id, qps=1, daily=2)))).code == QPS
        await asyncio.sleep(1.05)
        await limiter.admit_app(AppQuota(app_id, qps=1, daily=2))


class Clocks:
    def __init__(self, wall: float):
        self.wall, self.mono = wall, 100.0


def _shanghai(*args) -> float:
    return datetime(*args, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


async def test_local_day_turns_at_midnight_in_the_quota_zone():
    clocks = Clocks(_shanghai(2026, 3, 1, 23, 59, 0))
    limiter = LocalLimiter(calendar=QuotaCalendar("Asia/Shanghai"), wall_clock=lambda: clocks.wall,
                           clock=lambda: clocks.mono)
    await limiter.admit_app(AppQuota(1, daily=1))
    refused = await refusal(limiter.admit_app(AppQuota(1, daily=1)))
    assert refused.code == DAILY and refused.retry_after == pytest.approx(60)
    assert refused.headers["Retry-After"] == "60"
    clocks.wall += 61  # 00:00:01 in Shanghai, still the 1st in UTC
    await limiter.admit_app(AppQuota(1, daily=1))


async def test_local_day_in_another_zone():
    # 23:59 in Shanghai is 15:59 UTC: for a UTC calendar the day has 8 hours left.
    clocks = Clocks(_shanghai(2026, 3, 1, 23, 59, 0))
    limiter = LocalLimiter(calendar=QuotaCalendar("UTC"), wall_clock=lambda: clocks.wall)
    await limiter.admit_app(AppQuota(1, daily=1))
    refused = await refusal(limiter.admit_app(AppQuota(1, daily=1)))
    assert refused.retry_after == pytest.approx(8 * 3600 + 60)


async def test_local_daily_count_survives_a_restart_through_the_seed():
    seen = []

    def seed(app_id: int, day: str) -> int:
        seen.append((app_id, day))
        return 4  # what the usage table holds for today

    clocks = Clocks(_shanghai(2026, 3, 1, 12, 0, 0))
    limiter = LocalLimiter(calendar=QuotaCalendar("Asia/Shanghai"), wall_clock=lambda: clocks.wall, daily_seed=seed)
    results = await asyncio.gather(*(refusal(limiter.admit_app(AppQuota(7, daily=5))) for _ in range(3)))
    assert sum(not isinstance(r, LimitRefused) for r in results) == 1
    assert {r.code for r in results if isinstance(r, LimitRefused)} == {DAILY}
    assert set(seen) == {(7, "2026-03-01")}
    seen.clear()
    clocks.wall += 86400  # a new day is seeded again
    await limiter.admit_app(AppQuota(7, daily=5))
    assert seen == [(7, "2026-03-02")]


async def test_redis_day_rolls_over(redis_url, app_id):
    """The stored day is Redis's day: a count left from an earlier day does not count today."""
    from qfserve.limits.redis import RedisLimiter

    limiter = RedisLimiter(redis_url)
    try:
        await limiter.admit_app(AppQuota(app_id, daily=1))
        assert (await refusal(limiter.admit_app(AppQuota(app_id, daily=1)))).code == DAILY
        key = f"qfserve:rl:{{app:{app_id}}}:day"
        today = int(await limiter._client.hget(key, "day"))
        await limiter._client.hset(key, "day", today - 1)  # as if the count were yesterday's
        await limiter.admit_app(AppQuota(app_id, daily=1))
        assert (int(await limiter._client.hget(key, "day")), int(await limiter._client.hget(key, "count"))) == (today, 1)
    finally:
        await limiter.close()


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12"])
async def test_redis_day_number_follows_the_zone(redis_url, app_id, zone):
    # UTC+14 and UTC-12 are 26 hours apart: at any moment at least one of them has another date than UTC.
    from qfserve.limits.redis import RedisLimiter

    limiter = RedisLimiter(redis_url, calendar=QuotaCalendar(zone))
    try:
        await limiter.admit_app(AppQuota(app_id, daily=1))
        stored = int(await limiter._client.hget(f"qfserve:rl:{{app:{app_id}}}:day", "day"))
        refused = await refusal(limiter.admit_app(AppQuota(app_id, daily=1)))
    finally:
        await limiter.close()
    now = datetime.now(ZoneInfo(zone))
    assert stored == (now.date() - datetime(1970, 1, 1).date()).days
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    assert abs(refused.retry_after - (midnight - now).total_seconds()) < 5


async def test_two_redis_limiters_share_app_quotas(redis_url, app_id):
    first, second = make_limiter("redis", redis_url), make_limiter("redis", redis_url)
    try:
        results = await asyncio.gather(*(refusal(limiter.admit_app(AppQuota(app_id, qps=100, daily=6)))
                                         for _ in range(10) for limiter in (first, second)))
        assert sum(not isinstance(r, LimitRefused) for r in results) == 6
        assert [r.code for r in results if isinstance(r, LimitRefused)] == [DAILY] * 14
        other = app_id + 1
        results = await asyncio.gather(*(refusal(limiter.admit_app(AppQuota(other, qps=4)))
                                         for _ in range(10) for limiter in (first, second)))
        assert sum(not isinstance(r, LimitRefused) for r in results) == 4
    finally:
        await first.close()
        await second.close()


# --- the service budget's refusals carry their budget and Retry-After --------------------------------


async def test_rpm_refusal_carries_budget_and_retry_after(backend):
    key = f"svc-{uuid.uuid4().hex[:8]}:1"
    async with backend() as limiter:
        await limiter.admit(key, 2, 1000, 100)
        await limiter.admit(key, 2, 1000, 50)
        refused = await refusal(limiter.admit(key, 2, 1000, 1))
    assert (refused.code, refused.reason) == (RPM, "rpm")
    assert 59 < refused.retry_after <= 60
    assert refused.headers == {
        "X-Ratelimit-Limit-Requests": "2",
        "X-Ratelimit-Limit-Tokens": "1000",
        "X-Ratelimit-Remaining-Requests": "0",
        "X-Ratelimit-Remaining-Tokens": "850",
        "Retry-After": "60",
    }


async def test_tpm_refusal_retry_after_is_when_enough_tokens_leave(backend):
    key = f"svc-{uuid.uuid4().hex[:8]}:2"
    async with backend() as limiter:
        await limiter.admit(key, 10, 100, 60)
        refused = await refusal(limiter.admit(key, 10, 100, 50))
        never = await refusal(limiter.admit(key, 10, 100, 101))  # larger than the whole TPM
    assert (refused.code, refused.reason) == (TPM, "tpm")
    assert refused.headers["X-Ratelimit-Remaining-Tokens"] == "40"
    assert refused.headers["X-Ratelimit-Remaining-Requests"] == "9"
    assert 59 < refused.retry_after <= 60 and refused.headers["Retry-After"] == "60"
    assert never.retry_after == 60


async def test_local_tpm_retry_after_counts_the_entries_that_must_leave():
    class Clock:
        now = 0.0

    limiter = LocalLimiter(clock=lambda: Clock.now)
    await limiter.admit("k", 10, 100, 30)   # at 0 s
    Clock.now = 20
    await limiter.admit("k", 10, 100, 30)   # at 20 s
    Clock.now = 30
    await limiter.admit("k", 10, 100, 30)   # at 30 s
    Clock.now = 40
    # 90 used; 70 more need 60 freed: the first two entries must leave, at 60 s and 80 s.
    refused = await refusal(limiter.admit("k", 10, 100, 70))
    assert refused.retry_after == pytest.approx(40)


async def test_admit_request_gives_the_app_quota_back_when_the_service_refuses(backend, app_id):
    key = f"svc-{app_id}:{app_id}"
    quota = AppQuota(app_id, qps=100, daily=2)
    async with backend() as limiter:
        await limiter.admit_request(key, 1, 1000, 1, quota)
        for _ in range(4):
            with pytest.raises(QianfanError) as caught:
                await limiter.admit_request(key, 1, 1000, 1, quota)
            assert caught.value.code == RPM
        # the day still has one request left: the four RPM refusals were given back
        await limiter.admit_request(key + "-other", 1, 1000, 1, quota)
        assert (await refusal(limiter.admit_request(key + "-third", 1, 1000, 1, quota))).code == DAILY
