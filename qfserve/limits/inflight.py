"""The server's ceiling on chat requests in flight: past it, a request is refused at once with code 4.

No queue: the engine has its own (answered 336100 when full); this limit protects the whole
process (memory, connections, prompt rendering) and answers before any work is done. Each server
process counts its own requests. The route holds a slot for the request's whole life, streaming
body included. Everything runs on the event loop, so counting needs no lock.
"""

from __future__ import annotations

from qfserve import metrics
from qfserve.limits.base import LimitRefused
from qfserve.protocol.errors import Code


class InFlightSlot:
    def __init__(self, limit: InFlightLimit):
        self._limit: InFlightLimit | None = limit

    def release(self) -> None:
        """Give the slot back; a second call does nothing."""
        if self._limit is not None:
            self._limit._release()
            self._limit = None


class InFlightLimit:
    def __init__(self, limit: int = 0):
        self.limit = limit  # 0: no ceiling
        self.in_flight = 0

    def acquire(self) -> InFlightSlot:
        """A slot, or LimitRefused 4 when `limit` requests are already in flight."""
        if self.limit > 0 and self.in_flight >= self.limit:
            raise LimitRefused(Code.REQUEST_LIMIT, "in_flight")
        self.in_flight += 1
        metrics.IN_FLIGHT.set(self.in_flight)
        return InFlightSlot(self)

    def _release(self) -> None:
        self.in_flight -= 1
        metrics.IN_FLIGHT.set(self.in_flight)
