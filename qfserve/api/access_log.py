"""The access log: one line per request on the `qfserve.access` logger, written when the answer
has been sent in full (a stream included).

A line carries the request id, app, service, HTTP status, the wire's error code (0 when none),
prompt and completion tokens, and the latency; never a message, an answer, a query string or a
credential. Route code adds what only it knows with :func:`note`; the middleware adds the rest.
Probes (/healthz, /readyz, /metrics) are logged at DEBUG, so they don't drown the rest at INFO.

The middleware also counts requests in flight (`app.state.requests_open`), which the graceful drain
waits on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("qfserve.access")

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_FIELDS = ("request_id", "app", "service", "code", "prompt_tokens", "completion_tokens")


def note(request: Request, **fields: Any) -> None:
    """Record fields for this request's access-log line: app, service, code, prompt_tokens,
    completion_tokens (later calls overwrite earlier ones)."""
    found = getattr(request.state, "access", None)
    if found is None:
        found = request.state.access = {}
    found.update(fields)


def note_usage(request: Request, usage: Any) -> None:
    """The tokens of an answer, from its wire `usage` (anything with prompt_tokens and completion_tokens)."""
    if usage is not None:
        note(request, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


class AccessLogMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so streams pass through untouched."""

    def __init__(self, app: ASGIApp, enabled: bool = True):
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        app_state = scope["app"].state if "app" in scope else None
        probe = scope.get("path") in PROBES
        started = time.perf_counter()
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if app_state is not None and not probe:
            app_state.requests_open = getattr(app_state, "requests_open", 0) + 1
        try:
            await self.app(scope, receive, send_and_watch)
        except asyncio.CancelledError:  # the client went away, or shutdown cut the answer
            state.setdefault("access", {})["code"] = "cancelled"
            raise
        except BaseException:
            status = status or 500
            state.setdefault("access", {}).setdefault("code", "internal")
            raise
        finally:
            if app_state is not None and not probe:
                app_state.requests_open -= 1
            if self.enabled:
                self._write(scope, state, status, time.perf_counter() - started, probe)

    @staticmethod
    def _write(scope: Scope, state: dict, status: int, seconds: float, probe: bool) -> None:
        level = logging.DEBUG if probe else logging.INFO
        if not log.isEnabledFor(level):
            return
        noted = state.get("access") or {}
        fields: dict[str, Any] = {"request_id": noted.get("request_id") or state.get("request_id")}
        fields.update({key: noted.get(key) for key in _FIELDS[1:]})
        if fields["code"] is None and status:
            fields["code"] = 0 if status < 400 else status
        fields.update(method=scope.get("method"), path=scope.get("path"), status=status,
                      latency_ms=round(seconds * 1000, 1))
        text = " ".join(f"{key}={'-' if value is None else value}" for key, value in fields.items())
        log.log(level, text, extra={"fields": fields})
