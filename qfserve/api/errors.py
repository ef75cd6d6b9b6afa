"""The one place where errors become wire bodies (qianfan-wire.md §3).

Business errors are HTTP 200 with a compact one-line JSON body carrying `id`. Nothing else ever
reaches a client: an unexpected exception is logged and answered 336000, never as a traceback.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from qfserve import metrics
from qfserve.api.access_log import note
from qfserve.limits.base import LimitRefused
from qfserve.protocol.errors import Code, OAuthError, QianfanError
from qfserve.protocol.ids import request_id

log = logging.getLogger(__name__)

JSON_TYPE = "application/json;charset=utf-8"


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(error: QianfanError, rid: str | None = None, headers: dict | None = None) -> Response:
    """The wire body; the error's own headers (a limit's budget and Retry-After) win over `headers`."""
    metrics.ERRORS.labels(str(error.code)).inc()
    if isinstance(error, LimitRefused):
        metrics.LIMIT_REJECTIONS.labels(str(error.code), error.reason).inc()
    if error.headers:
        headers = {**(headers or {}), **error.headers}
    return json_response(error.body(rid or request_id()), headers=headers)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request_id()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QianfanError)
    async def _qianfan(request: Request, exc: QianfanError) -> Response:
        note(request, code=exc.code)
        return error_response(exc, _rid(request))

    @app.exception_handler(OAuthError)
    async def _oauth(request: Request, exc: OAuthError) -> Response:
        note(request, code=exc.error)
        return json_response(exc.body(), status=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        note(request, code=int(Code.INVALID_ARGUMENT))
        return error_response(QianfanError(Code.INVALID_ARGUMENT), _rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {405: Code.INVALID_HTTP_METHOD, 404: Code.UNSUPPORTED_METHOD}.get(exc.status_code, Code.UNKNOWN)
        note(request, code=int(code))
        return error_response(QianfanError(code), _rid(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        note(request, code=int(Code.INTERNAL))
        return error_response(QianfanError(Code.INTERNAL), _rid(request))
