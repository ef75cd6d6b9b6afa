"""The failed-authentication throttle: >limit failures in a window blocks the address until it passes."""

from __future__ import annotations

import pytest

from qfserve.auth.throttle import FailedAuthThrottle
from qfserve.limits import LimitRefused
from qfserve.protocol.errors import QianfanError


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def blocked(throttle: FailedAuthThrottle, addr: str) -> bool:
    try:
        throttle.check(addr)
    except QianfanError as exc:
        assert (exc.code, exc.message) == (18, "Open api qps request limit reached")
        return True
    return False


def test_twenty_first_failure_blocks():
    throttle = FailedAuthThrottle(limit=20, window=60, clock=Clock())
    for _ in range(20):
        assert not blocked(throttle, "10.0.0.1")
        throttle.record_failure("10.0.0.1")
    assert not blocked(throttle, "10.0.0.1")  # 20 failures: still allowed to try
    throttle.record_failure("10.0.0.1")
    assert blocked(throttle, "10.0.0.1")
    assert not blocked(throttle, "10.0.0.2")  # other addresses unaffected


def test_refusal_says_why_and_when_it_lifts():
    """The throttle's 18 is told apart from the app QPS quota's 18 (metrics reason) and carries Retry-After."""
    clock = Clock()
    throttle = FailedAuthThrottle(limit=1, window=60, clock=clock)
    throttle.record_failure("a")
    clock.now += 20
    throttle.record_failure("a")
    with pytest.raises(LimitRefused) as caught:
        throttle.check("a")
    assert (caught.value.code, caught.value.reason) == (18, "auth_failures")
    assert caught.value.retry_after == pytest.approx(40)
    assert caught.value.headers == {"Retry-After": "40"}


def test_successes_never_count():
    throttle = FailedAuthThrottle(limit=2, window=60, clock=Clock())
    for _ in range(100):  # successful calls only ever check
        assert not blocked(throttle, "10.0.0.1")


def test_block_lifts_when_window_passes():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=2, window=60, clock=clock)
    for _ in range(3):
        throttle.record_failure("10.0.0.1")
    assert blocked(throttle, "10.0.0.1")
    clock.now += 59.9
    assert blocked(throttle, "10.0.0.1")
    clock.now += 0.1
    assert not blocked(throttle, "10.0.0.1")
    throttle.record_failure("10.0.0.1")  # a fresh window, counting from one
    assert not blocked(throttle, "10.0.0.1")


def test_window_starts_at_first_failure():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=2, window=60, clock=clock)
    throttle.record_failure("a")
    clock.now += 50
    throttle.record_failure("a")
    clock.now += 15  # first window over: the next failure starts a new one
    throttle.record_failure("a")
    throttle.record_failure("a")
    assert not blocked(throttle, "a")


@pytest.mark.parametrize("addresses", [50, 500])
def test_memory_bounded(addresses):
    clock = Clock()
    throttle = FailedAuthThrottle(limit=1, window=60, max_addresses=10, clock=clock)
    for i in range(addresses):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 10
    # the newest survive
    last = f"10.0.{(addresses - 1) // 256}.{(addresses - 1) % 256}"
    throttle.record_failure(last)
    assert blocked(throttle, last)


def test_expired_windows_evicted():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=1, window=60, clock=clock)
    for i in range(100):
        throttle.record_failure(f"old-{i}")
    clock.now += 61
    throttle.record_failure("new")
    assert list(throttle._failures) == ["new"]
