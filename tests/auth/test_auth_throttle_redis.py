"""The failed-auth throttle shared through Redis: failures seen by one gateway throttle on all."""

from __future__ import annotations

import time

from limits.conftest import redis_url  # noqa: F401  (the private redis-server fixture)

from qfserve.auth.throttle_redis import RedisFailedAuthThrottle


def wait_throttled(throttle, address: str, credential: str | None = None, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not throttle.throttled(address, credential):
        assert time.monotonic() < deadline, "the block never reached this gateway"
        time.sleep(0.02)


def test_failures_on_two_gateways_add_up_and_throttle_on_both(redis_url):  # noqa: F811
    a = RedisFailedAuthThrottle(redis_url, limit=3, window=30)
    b = RedisFailedAuthThrottle(redis_url, limit=3, window=30)
    try:
        time.sleep(0.3)  # both subscribed
        address = f"10.0.0.{time.monotonic_ns() % 250}"
        assert [a.failed(address), b.failed(address), a.failed(address)] == [False] * 3  # at the limit
        assert not b.throttled(address)
        assert b.failed(address) is True  # the fourth, on the other gateway
        wait_throttled(a, address)  # heard through Redis
        assert 0 < a.retry_after(address) <= 30
        assert not a.throttled("10.9.9.9")  # other addresses are untouched
    finally:
        a.close()
        b.close()


def test_a_credential_is_counted_across_addresses(redis_url):  # noqa: F811
    throttle = RedisFailedAuthThrottle(redis_url, limit=2, window=30)
    try:
        credential = f"ak:victim-{time.monotonic_ns()}"
        verdicts = [throttle.failed(f"10.1.0.{i}", credential) for i in range(3)]
        assert verdicts == [False, False, True]
        assert throttle.throttled("10.1.9.9", credential)
        assert not throttle.throttled("10.1.9.9", "ak:other")
    finally:
        throttle.close()


def test_block_ends_with_the_window(redis_url):  # noqa: F811
    throttle = RedisFailedAuthThrottle(redis_url, limit=1, window=0.5)
    try:
        address = f"10.2.0.{time.monotonic_ns() % 250}"
        throttle.failed(address)
        assert throttle.failed(address) is True
        time.sleep(0.6)
        assert not throttle.throttled(address)
    finally:
        throttle.close()


def test_redis_down_falls_back_to_counting_locally():
    throttle = RedisFailedAuthThrottle("redis://127.0.0.1:1/0", limit=1, window=30)
    try:
        assert throttle.failed("x") is False
        assert throttle.failed("x") is True
        assert throttle.throttled("x")
    finally:
        throttle.close()
