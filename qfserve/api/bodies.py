"""Request bodies, bounded in size and time before any route reads them.

An ASGI middleware: it reads the body itself, counting bytes as they arrive, and hands the app the
whole body only when it fits the route's limit. A declared `Content-Length` over the limit is
answered at once, without reading a byte of the body; a chunked body is cut off as soon as it
passes the limit. Either way the answer carries `Connection: close`, so the client can't keep
streaming into the socket. The answer has the route's own error shape:

- `/oauth/2.0/token`: OAuth's `{"error_description", "error": "invalid_request"}`, HTTP 413;
- under `/v2/`: that error's v2 twin (HTTP 400, `{"error": {"code", "message", "type"}, "id"}`);
- everything else: Qianfan's `{"error_code": 336003, "error_msg": ..., "id": ...}`, HTTP 200 like
  every business error (qianfan-wire.md §3; 336003 is "a parameter out of range or invalid").

A body that takes longer than `body_timeout` seconds to arrive gets HTTP 408 and the connection is
closed: a client dribbling a byte every few seconds can't hold a request open.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qfserve.api.errors import error_response, json_response, v2_error_response
from qfserve.protocol.errors import Code, OAuthError, QianfanError

TOKEN_PATH = "/oauth/2.0/token"
CHAT_PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"
V2_CHAT_PATH = "/v2/chat/completions"
UPLOAD_PATH = "/console/finetune/datasets"  # the console's fine-tuning data upload
CLOSE = {"Connection": "close"}


def body_too_large_message(limit: int) -> str:
    return f"the request body is too large: the limit is {limit} bytes"


class BodyLimits:
    """Which limit applies where. Chat gets room for the largest profile's input (507904 characters,
    up to 6 bytes each once a client JSON-escapes CJK as \\uXXXX) plus the other fields."""

    def __init__(self, *, chat: int, token: int, other: int, upload: int | None = None):
        self.chat = chat
        self.token = token
        self.other = other
        self.upload = upload if upload is not None else other

    def for_path(self, path: str) -> int:
        if path.startswith(CHAT_PREFIX) or path == V2_CHAT_PATH:
            return self.chat
        if path == TOKEN_PATH:
            return self.token
        if path == UPLOAD_PATH:
            return self.upload
        return self.other


class BoundedBodyMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits, timeout: float):
        self.app = app
        self.limits = limits
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limits.for_path(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(path, limit)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # no task per receive, as wait_for makes
                    message = await receive()
            except TimeoutError:
                await Response(status_code=408, headers=CLOSE)(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(path, limit)(scope, receive, send)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses a malformed length before we get here
    return None


def _too_large(path: str, limit: int) -> Response:
    if path == TOKEN_PATH:
        error = OAuthError("invalid_request", "request body too large", status=413)
        return json_response(error.body(), status=error.status, headers=CLOSE)
    error = QianfanError(Code.PARAM_OUT_OF_RANGE, body_too_large_message(limit))
    if path.startswith("/v2/"):
        return v2_error_response(error, headers=CLOSE)  # v2's shape: HTTP 400, {"error": {…}}
    return error_response(error, headers=CLOSE)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (the app listens there for the client going away)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
