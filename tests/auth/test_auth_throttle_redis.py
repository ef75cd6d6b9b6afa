"""The failed-auth throttle shared through Redis: failures seen by one gateway block on all."""

from __future__ import annotations

import time

import pytest
from limits.conftest import redis_url  # noqa: F401  (the private redis-server fixture)

from qfserve.auth.throttle_redis import RedisFailedAuthThrottle
from qfserve.protocol.errors import QianfanError


def wait_blocked(throttle, key: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            throttle.check(key)
        except QianfanError as error:
            assert error.code == 18
            return
        assert time.monotonic() < deadline, "the block never reached this gateway"
        time.sleep(0.02)


def test_failures_on_two_gateways_add_up_and_block_on_both(redis_url):  # noqa: F811
    a = RedisFailedAuthThrottle(redis_url, limit=3, window=30)
    b = RedisFailedAuthThrottle(redis_url, limit=3, window=30)
    try:
        time.sleep(0.3)  # both subscribed
        key = f"10.0.0.{time.monotonic_ns() % 250}"
        a.record_failure(key)
        b.record_failure(key)
        a.record_failure(key)
        a.check(key)  # three failures: not more than the limit yet
        b.check(key)
        b.record_failure(key)  # the fourth, on the other gateway
        with pytest.raises(QianfanError):
            b.check(key)
        wait_blocked(a, key)  # heard through Redis
        a.check("10.9.9.9")  # other addresses are untouched
    finally:
        a.close()
        b.close()


def test_block_ends_with_the_window(redis_url):  # noqa: F811
    throttle = RedisFailedAuthThrottle(redis_url, limit=1, window=0.5)
    try:
        key = f"credential-{time.monotonic_ns()}"
        throttle.record_failure(key)
        throttle.record_failure(key)
        with pytest.raises(QianfanError):
            throttle.check(key)
        time.sleep(0.6)
        throttle.check(key)
    finally:
        throttle.close()


def test_redis_down_falls_back_to_counting_locally():
    throttle = RedisFailedAuthThrottle("redis://127.0.0.1:1/0", limit=1, window=30)
    try:
        throttle.record_failure("x")
        throttle.record_failure("x")
        with pytest.raises(QianfanError):
            throttle.check("x")
    finally:
        throttle.close()
