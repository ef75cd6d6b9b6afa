"""The failed-authentication throttle: past `limit` failures in a window, further *failures* from that
address or for that credential get the throttled answer; nothing here ever refuses a valid caller."""

from __future__ import annotations

import pytest

from qfserve.auth.throttle import FailedAuthThrottle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_twenty_first_failure_is_throttled():
    throttle = FailedAuthThrottle(limit=20, window=60, clock=Clock())
    assert [throttle.failed("10.0.0.1") for _ in range(21)] == [False] * 20 + [True]
    assert throttle.throttled("10.0.0.1")
    assert not throttle.throttled("10.0.0.2")  # other addresses unaffected
    assert not throttle.failed("10.0.0.2")


def test_counted_per_credential_across_addresses():
    """Guessing one API Key's secret from many addresses is caught by the credential's count."""
    throttle = FailedAuthThrottle(limit=3, window=60, clock=Clock())
    verdicts = [throttle.failed(f"10.0.0.{i}", "ak:victim") for i in range(5)]
    assert verdicts == [False, False, False, True, True]
    assert throttle.throttled("10.9.9.9", "ak:victim")
    assert not throttle.throttled("10.9.9.9", "ak:other")


def test_counted_per_address_across_credentials():
    throttle = FailedAuthThrottle(limit=3, window=60, clock=Clock())
    verdicts = [throttle.failed("10.0.0.1", f"ak:{i}") for i in range(5)]
    assert verdicts == [False, False, False, True, True]
    assert not throttle.throttled("10.0.0.2", "ak:0")  # each credential only failed once


def test_block_lifts_when_window_passes():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=2, window=60, clock=clock)
    for _ in range(3):
        throttle.failed("10.0.0.1")
    assert throttle.throttled("10.0.0.1")
    clock.now += 59.9
    assert throttle.throttled("10.0.0.1")
    clock.now += 0.1
    assert not throttle.throttled("10.0.0.1")
    assert not throttle.failed("10.0.0.1")  # a fresh window, counting from one


def test_window_starts_at_first_failure():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=2, window=60, clock=clock)
    throttle.failed("a")
    clock.now += 50
    throttle.failed("a")
    clock.now += 15  # first window over: the next failure starts a new one
    throttle.failed("a")
    assert not throttle.failed("a")


@pytest.mark.parametrize("addresses", [50, 500])
def test_memory_bounded(addresses):
    throttle = FailedAuthThrottle(limit=1, window=60, max_keys=10, clock=Clock())
    for i in range(addresses):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", f"ak:{i}")
    assert len(throttle._addresses.entries) == 10 and len(throttle._credentials.entries) == 10
    # the newest survive
    last = f"10.0.{(addresses - 1) // 256}.{(addresses - 1) % 256}"
    assert throttle.failed(last)


def test_expired_windows_evicted():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=1, window=60, clock=clock)
    for i in range(100):
        throttle.failed(f"old-{i}")
    clock.now += 61
    throttle.failed("new")
    assert list(throttle._addresses.entries) == ["new"]


def test_retry_after_is_when_the_throttling_window_ends():
    clock = Clock()
    throttle = FailedAuthThrottle(limit=1, window=60, clock=clock)
    throttle.failed("a", "ak:x")
    clock.now += 20
    assert throttle.failed("a", "ak:x") is True
    assert throttle.retry_after("a", "ak:x") == pytest.approx(40)
    assert throttle.retry_after("b", "ak:y") == 0.0
