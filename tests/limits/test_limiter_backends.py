"""The limiter contract (qfserve/limits/base.py), run against both backends."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager

import pytest

from qfserve.limits import Limiter, make_limiter
from qfserve.limits.local import LocalLimiter
from qfserve.protocol.errors import QianfanError

RPM_CODE, TPM_CODE = 336501, 336502


@pytest.fixture(params=["local", "redis"])
def backend(request):
    """An async context manager making a fresh limiter of the parametrised backend."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    @asynccontextmanager
    async def open_limiter():
        limiter = make_limiter(request.param, url)
        try:
            yield limiter
        finally:
            await limiter.close()

    return open_limiter


@pytest.fixture
def key():
    # The Redis server is shared by the whole session: every test gets its own budget.
    return f"svc-{uuid.uuid4().hex[:8]}:1"


async def outcome(limiter: Limiter, key: str, rpm: int, tpm: int, prompt: int):
    try:
        return await limiter.admit(key, rpm, tpm, prompt)
    except QianfanError as exc:
        return exc.code


async def test_concurrent_load_admits_exactly_rpm(backend, key):
    async with backend() as limiter:
        results = await asyncio.gather(*(outcome(limiter, key, 5, 10**6, 10) for _ in range(30)))
    admitted = [r for r in results if not isinstance(r, int)]
    assert len(admitted) == 5
    assert [r for r in results if isinstance(r, int)] == [RPM_CODE] * 25
    assert sorted(r.budget.remaining_requests for r in admitted) == [0, 1, 2, 3, 4]


async def test_refusal_message(backend, key):
    async with backend() as limiter:
        await limiter.admit(key, 1, 100, 1)
        with pytest.raises(QianfanError) as rpm:
            await limiter.admit(key, 1, 100, 1)
        with pytest.raises(QianfanError) as tpm:
            await limiter.admit(key + "x", 10, 100, 101)
    assert rpm.value.body("as-1") == {"error_code": RPM_CODE, "error_msg": "Rate limit reached for RPM", "id": "as-1"}
    assert tpm.value.body("as-1") == {"error_code": TPM_CODE, "error_msg": "Rate limit reached for TPM", "id": "as-1"}


async def test_tpm_refusal_consumes_nothing(backend, key):
    async with backend() as limiter:
        first = await limiter.admit(key, 10, 100, 60)
        assert (first.budget.remaining_requests, first.budget.remaining_tokens) == (9, 40)
        assert await outcome(limiter, key, 10, 100, 50) == TPM_CODE
        second = await limiter.admit(key, 10, 100, 40)  # the refused 50 were not counted
        assert (second.budget.remaining_requests, second.budget.remaining_tokens) == (8, 0)
        assert await outcome(limiter, key, 10, 100, 1) == TPM_CODE


async def test_rpm_refusal_consumes_nothing(backend, key):
    async with backend() as limiter:
        await limiter.admit(key, 2, 1000, 10)
        await limiter.admit(key, 2, 1000, 10)
        for _ in range(5):
            assert await outcome(limiter, key, 2, 1000, 10) == RPM_CODE
        # a higher limit for the same key sees only the two admitted requests and their tokens
        third = await limiter.admit(key, 3, 1000, 10)
        assert (third.budget.remaining_requests, third.budget.remaining_tokens) == (0, 970)


async def test_settle_replaces_estimate(backend, key):
    async with backend() as limiter:
        reservation = await limiter.admit(key, 10, 1000, 100)
        assert reservation.budget.remaining_tokens == 900
        settled = await reservation.settle(250)
        assert (settled.remaining_requests, settled.remaining_tokens) == (9, 750)
        assert settled.headers() == {
            "X-Ratelimit-Limit-Requests": "10",
            "X-Ratelimit-Limit-Tokens": "1000",
            "X-Ratelimit-Remaining-Requests": "9",
            "X-Ratelimit-Remaining-Tokens": "750",
        }
        other = await limiter.admit(key, 10, 1000, 10)
        assert (other.budget.remaining_requests, other.budget.remaining_tokens) == (8, 740)
        # settling lower gives tokens back; settling twice replaces, never adds
        assert (await reservation.settle(50)).remaining_tokens == 940
        assert (await reservation.settle(50)).remaining_tokens == 940


async def test_settle_above_budget_reports_zero_remaining(backend, key):
    async with backend() as limiter:
        reservation = await limiter.admit(key, 10, 100, 90)
        budget = await reservation.settle(180)
        assert budget.remaining_tokens == -80
        assert budget.headers()["X-Ratelimit-Remaining-Tokens"] == "0"
        assert await outcome(limiter, key, 10, 100, 1) == TPM_CODE


async def test_keys_have_separate_budgets(backend, key):
    async with backend() as limiter:
        await limiter.admit(key, 1, 100, 1)
        assert await outcome(limiter, key, 1, 100, 1) == RPM_CODE
        other = await limiter.admit(key + "-other", 1, 100, 1)
        assert other.budget.remaining_requests == 0


# --- backend specifics ---------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


async def test_local_window_slides():
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    await limiter.admit("k", 2, 1000, 100)
    clock.now += 30
    await limiter.admit("k", 2, 1000, 200)
    assert await outcome(limiter, "k", 2, 1000, 1) == RPM_CODE
    clock.now += 30  # the first request is 60 s old: out of the window, with its tokens
    third = await limiter.admit("k", 2, 1000, 1)
    assert (third.budget.remaining_requests, third.budget.remaining_tokens) == (0, 799)


async def test_local_settle_after_window_changes_nothing():
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    reservation = await limiter.admit("k", 5, 1000, 100)
    clock.now += 61  # a generation that outlived the window
    budget = await reservation.settle(900)
    assert (budget.remaining_requests, budget.remaining_tokens) == (5, 1000)


async def test_redis_window_slides(redis_url, key):
    from qfserve.limits.redis import RedisLimiter

    limiter = RedisLimiter(redis_url, window=0.5)
    try:
        await limiter.admit(key, 1, 100, 40)
        assert await outcome(limiter, key, 1, 100, 1) == RPM_CODE
        await asyncio.sleep(0.6)
        fresh = await limiter.admit(key, 1, 100, 30)
        assert (fresh.budget.remaining_requests, fresh.budget.remaining_tokens) == (0, 70)
    finally:
        await limiter.close()


async def test_two_redis_limiters_share_one_budget(redis_url, key):
    """Two instances stand for two server processes: together they admit the limit, no more."""
    first, second = make_limiter("redis", redis_url), make_limiter("redis", redis_url)
    try:
        results = await asyncio.gather(
            *(outcome(limiter, key, 7, 10**6, 10) for _ in range(15) for limiter in (first, second))
        )
        assert sum(not isinstance(r, int) for r in results) == 7
        assert results.count(RPM_CODE) == 23
        # settling through one instance is seen by the other
        reservation = next(r for r in results if not isinstance(r, int))
        await reservation.settle(1010)
        assert await outcome(second, key, 8, 10**6, 0) != RPM_CODE  # limit 8: one more fits
        last = await first.admit(key, 9, 10**6, 0)
        assert last.budget.remaining_tokens == 10**6 - 7 * 10 - 1000
    finally:
        await first.close()
        await second.close()


async def test_redis_unreachable_is_retryable_unavailable():
    from qfserve.limits.redis import RedisLimiter

    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(QianfanError) as caught:
            await limiter.admit("k", 1, 1, 1)
        assert caught.value.code == 2
    finally:
        await limiter.close()


def test_make_limiter_validates():
    assert isinstance(make_limiter("local", None), LocalLimiter)
    with pytest.raises(ValueError, match="redis URL"):
        make_limiter("redis", None)
    with pytest.raises(ValueError, match="unknown limiter backend"):
        make_limiter("memcached", None)


async def test_refusals_say_when_a_request_fits_again(backend, key):
    """Over RPM: when the oldest request leaves the minute window (the v2 surface's Retry-After)."""
    async with backend() as limiter:
        await limiter.admit(key, 2, 10**6, 1)
        await asyncio.sleep(0.3)
        await limiter.admit(key, 2, 10**6, 1)
        for refuse in (limiter.admit(key, 2, 10**6, 1), limiter.check_requests(key, 2, 10**6)):
            with pytest.raises(QianfanError) as rpm:
                await refuse
            assert rpm.value.code == RPM_CODE
            # The first of the two leaves first: a little under 60 s from its admission.
            assert 55 < rpm.value.retry_after < 59.8, rpm.value.retry_after


async def test_tpm_refusal_waits_for_enough_tokens_to_leave():
    now = [100.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    await limiter.admit("k", 100, 100, 30)
    now[0] = 110.0
    await limiter.admit("k", 100, 100, 30)
    now[0] = 120.0
    with pytest.raises(QianfanError) as tpm:
        await limiter.admit("k", 100, 100, 60)  # 60 used: the first 30 must leave, at 160
    assert tpm.value.code == TPM_CODE and tpm.value.retry_after == pytest.approx(40.0)
    with pytest.raises(QianfanError) as never:
        await limiter.admit("k", 100, 100, 101)  # larger than the whole budget: a whole window
    assert never.value.retry_after == pytest.approx(60.0)
