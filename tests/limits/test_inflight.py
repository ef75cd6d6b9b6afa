"""The server's ceiling on requests in flight: refused at once with code 4, slots given back once."""

from __future__ import annotations

import pytest

from qfserve import metrics
from qfserve.limits import LimitRefused
from qfserve.limits.inflight import InFlightLimit


def test_ceiling_refuses_at_once_and_frees_on_release():
    limit = InFlightLimit(2)
    first, second = limit.acquire(), limit.acquire()
    with pytest.raises(LimitRefused) as caught:
        limit.acquire()
    assert (caught.value.code, caught.value.message, caught.value.reason) == (4, "Open api request limit reached", "in_flight")
    assert "Retry-After" not in caught.value.headers  # nobody knows when a request ends
    assert metrics.IN_FLIGHT._value.get() == 2
    first.release()
    first.release()  # a second release gives nothing back twice
    assert limit.in_flight == 1
    third = limit.acquire()
    with pytest.raises(LimitRefused):
        limit.acquire()
    second.release(), third.release()
    assert limit.in_flight == 0 and metrics.IN_FLIGHT._value.get() == 0


def test_zero_means_no_ceiling():
    limit = InFlightLimit(0)
    slots = [limit.acquire() for _ in range(1000)]
    assert limit.in_flight == 1000
    for slot in slots:
        slot.release()
    assert limit.in_flight == 0
