"""uvicorn with a drain before its own shutdown, so a load balancer sees the server leave.

On the first SIGTERM (or Ctrl+C) the port stays open: /readyz answers 503 and new chat requests
get error 2 (`app.state.shutting_down`), while the requests in flight (`app.state.requests_open`,
counted by the access-log middleware) finish. When none is left, or `drain_seconds` have passed,
uvicorn's own graceful shutdown runs. A second signal skips the rest of the drain.
"""

from __future__ import annotations

import logging
import time

import uvicorn

log = logging.getLogger("qfserve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, web_app, drain_seconds: float):
        super().__init__(config)
        self.web_app = web_app
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None
        self._signal: int | None = None
        self._announced = False

    def handle_exit(self, sig, frame) -> None:
        if self._drain_until is not None or self.drain_seconds <= 0 or self.should_exit:
            super().handle_exit(sig, frame)
            return
        # A signal handler: only set flags here; on_tick (in the event loop) does the rest.
        self._signal = sig
        self._drain_until = time.monotonic() + self.drain_seconds
        self.web_app.state.shutting_down = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            in_flight = getattr(self.web_app.state, "requests_open", 0)
            if not self._announced:
                self._announced = True
                log.info("draining: %d request(s) in flight, waiting up to %gs", in_flight, self.drain_seconds)
            if in_flight <= 0 or time.monotonic() >= self._drain_until:
                if in_flight > 0:
                    log.warning("drain time over with %d request(s) in flight; stopping", in_flight)
                super().handle_exit(self._signal, None)  # uvicorn's shutdown; it re-raises the signal at exit
        return await super().on_tick(counter)
