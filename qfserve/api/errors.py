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
from qfserve.engine.base import EngineOverloaded, EnginePromptTooLong, EngineUnavailable
from qfserve.protocol.errors import Code, OAuthError, QianfanError
from qfserve.protocol.ids import request_id

log = logging.getLogger(__name__)

JSON_TYPE = "application/json;charset=utf-8"


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(error: QianfanError, rid: str | None = None, headers: dict | None = None) -> Response:
    metrics.ERRORS.labels(str(error.code)).inc()
    return json_response(error.body(rid or request_id()), headers=headers)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request_id()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QianfanError)
    async def _qianfan(request: Request, exc: QianfanError) -> Response:
        return error_response(exc, _rid(request))

    @app.exception_handler(OAuthError)
    async def _oauth(request: Request, exc: OAuthError) -> Response:
        return json_response(exc.body(), status=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(QianfanError(Code.INVALID_ARGUMENT), _rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return error_response(QianfanError(Code.INVALID_HTTP_METHOD), _rid(request))
        if exc.status_code == 404:
            return error_response(QianfanError(Code.UNSUPPORTED_METHOD), _rid(request))
        return error_response(QianfanError(Code.UNKNOWN), _rid(request))

    # Engine refusals met outside the answer stream (a remote engine counting the prompt).
    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(request: Request, exc: EngineUnavailable) -> Response:
        log.warning("engine unavailable on %s: %s", request.url.path, exc)
        return error_response(QianfanError(Code.SERVICE_UNAVAILABLE), _rid(request))

    @app.exception_handler(EngineOverloaded)
    async def _engine_overloaded(request: Request, exc: EngineOverloaded) -> Response:
        return error_response(QianfanError(Code.OVERLOADED), _rid(request))

    @app.exception_handler(EnginePromptTooLong)
    async def _prompt_too_long(request: Request, exc: EnginePromptTooLong) -> Response:
        log.info("engine refused the prompt as too long on %s: %s", request.url.path, exc)
        return error_response(QianfanError(Code.PROMPT_TOKENS_TOO_LONG), _rid(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(QianfanError(Code.INTERNAL), _rid(request))
