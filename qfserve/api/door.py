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

from starlette.types import ASGIApp, Receive, Scope, Send

from qfserve.api.bodies import CHAT_PREFIX
from qfserve.api.errors import error_response
from qfserve.protocol.errors import QianfanError

TICKET = "admission_ticket"  # the scope state key the chat route reads


class AdmissionDoor:
    """Pure ASGI; sits inside the access log, so its refusals are logged like the route's."""

    def __init__(self, app: ASGIApp):
        self.app = app

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
            await error_response(error)(scope, receive, send)
            return
        if ticket is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[TICKET] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.release()  # a no-op once the route's admission check took the place over
