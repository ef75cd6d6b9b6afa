"""Admission at the door: a chat request to a service whose engine could not start it in time is
refused (336100) before its caller is authenticated or its body parsed.

In a flood, those steps (a database look-up or two each) are what every refused request would
otherwise cost the one event loop, in turn: 300 requests at once waited about 0.3 s for a refusal
the app itself made in under a millisecond. Here the first requests of a burst take their places in
the engine's predicted wait (`ChatServing.reserve`), and the rest are answered at once. A place is
held only until the route's admission check takes it over, or the request ends, so a request that
fails authentication gives it back within milliseconds.

Only paths served before are recognised (the service's engine is remembered per path); anything
else goes through unchanged and meets the same check inside the route.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from qfserve.api.bodies import CHAT_PREFIX
from qfserve.api.errors import error_response
from qfserve.protocol.errors import QianfanError

TICKET = "admission_ticket"  # the scope state key the chat route reads
# A request that will wait for a sequence anyway lets a burst's refusals go first: it sleeps in steps
# of QUIET_SECONDS while the door refused someone within the last step, for at most its predicted
# wait or MAX_YIELD_SECONDS.
QUIET_SECONDS = 0.01
MAX_YIELD_SECONDS = 0.5


class AdmissionDoor:
    """Pure ASGI; sits inside the access log, so its refusals are logged like the route's."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._last_refusal = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        serving = getattr(scope["app"].state, "serving", None) if path.startswith(CHAT_PREFIX) else None
        if serving is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        api_path = path[len(CHAT_PREFIX):]
        try:
            ticket = serving.reserve(api_path)
        except QianfanError as error:
            scope.setdefault("state", {}).setdefault("access", {}).update(service=api_path, code=error.code)
            self._last_refusal = time.monotonic()
            await error_response(error)(scope, receive, send)
            return
        if ticket is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[TICKET] = ticket
        try:
            if ticket.predicted_wait > 0:
                await self._yield_to_refusals(min(ticket.predicted_wait, MAX_YIELD_SECONDS))
            await self.app(scope, receive, send)
        finally:
            ticket.release()  # a no-op once the route's admission check took the place over

    async def _yield_to_refusals(self, most: float) -> None:
        """In a burst, what an admitted request costs the one event loop on its way in (authentication,
        the prompt: milliseconds) would otherwise come before the refusals queued behind it."""
        give_up = time.monotonic() + most
        await asyncio.sleep(min(QUIET_SECONDS, most))  # the burst's refusals start once the places are taken
        while time.monotonic() - self._last_refusal < QUIET_SECONDS and time.monotonic() < give_up:
            await asyncio.sleep(min(QUIET_SECONDS, max(0.0, give_up - time.monotonic())))
