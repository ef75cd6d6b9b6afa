"""The one place where errors become wire bodies (qianfan-wire.md §3).

v1 business errors are HTTP 200 with a compact one-line JSON body carrying `id`. Under `/v2/` the
same errors are answered through their v2 twins (`protocol/v2_errors.py`): a real HTTP status and
`{"error": {"code", "message", "type"}, "id"}`. Nothing else ever reaches a client: an unexpected
exception is logged and answered 336000 (v2: 500 internal_error), never as a traceback.
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
from qfserve.api.deps import release_signature
from qfserve.limits.base import LimitRefused
from qfserve.engine.base import EngineOverloaded, EnginePromptTooLong, EngineUnavailable
from qfserve.protocol.errors import Code, OAuthError, QianfanError
from qfserve.protocol.ids import request_id
from qfserve.protocol.v2_errors import V2Error, twin_of

log = logging.getLogger(__name__)

JSON_TYPE = "application/json;charset=utf-8"


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON_TYPE, headers=headers)


def _count(error: QianfanError | V2Error) -> None:
    metrics.ERRORS.labels(str(error.code)).inc()
    if isinstance(error, LimitRefused):
        metrics.LIMIT_REJECTIONS.labels(str(error.code), error.reason).inc()


def error_response(error: QianfanError, rid: str | None = None, headers: dict | None = None) -> Response:
    """The v1 wire body; the error's own headers (a limit's budget and Retry-After) win over `headers`."""
    _count(error)
    if error.headers:
        headers = {**(headers or {}), **error.headers}
    return json_response(error.body(rid or request_id()), headers=headers)


def v2_error_response(error: QianfanError | V2Error, rid: str | None = None,
                      headers: dict | None = None) -> Response:
    """The v2 twin of an error, with its HTTP status (and Retry-After on 429)."""
    _count(error)
    answer = twin_of(error) if isinstance(error, QianfanError) else error
    return json_response(answer.body(rid or request_id()), status=answer.status,
                         headers={**(headers or {}), **answer.headers()})


def is_v2(request: Request) -> bool:
    return request.url.path.startswith("/v2/")


async def refusal(request: Request, error: QianfanError, rid: str | None = None,
                  headers: dict | None = None) -> Response:
    """A request refused with `error`: noted for the access log, its signature released when the
    SDK will resend it, and answered with the wire body."""
    note(request, code=error.code)
    await release_signature(request, error)
    respond = v2_error_response if is_v2(request) else error_response
    return respond(error, rid or _rid(request), headers=headers)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request_id()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QianfanError)
    async def _qianfan(request: Request, exc: QianfanError) -> Response:
        return await refusal(request, exc)

    @app.exception_handler(V2Error)
    async def _v2(request: Request, exc: V2Error) -> Response:
        note(request, code=exc.code)
        return v2_error_response(exc, _rid(request))

    @app.exception_handler(OAuthError)
    async def _oauth(request: Request, exc: OAuthError) -> Response:
        note(request, code=exc.error)
        return json_response(exc.body(), status=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return await refusal(request, QianfanError(Code.INVALID_ARGUMENT))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {405: Code.INVALID_HTTP_METHOD, 404: Code.UNSUPPORTED_METHOD}.get(exc.status_code, Code.UNKNOWN)
        return await refusal(request, QianfanError(code))

    # Engine refusals that reach the HTTP layer (serving maps the ones it expects; this is the net).
    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(request: Request, exc: EngineUnavailable) -> Response:
        log.warning("engine unavailable on %s: %s", request.url.path, exc)
        return await refusal(request, QianfanError(Code.SERVICE_UNAVAILABLE))

    @app.exception_handler(EngineOverloaded)
    async def _engine_overloaded(request: Request, exc: EngineOverloaded) -> Response:
        return await refusal(request, QianfanError(Code.OVERLOADED))

    @app.exception_handler(EnginePromptTooLong)
    async def _prompt_too_long(request: Request, exc: EnginePromptTooLong) -> Response:
        log.info("engine refused the prompt as too long on %s: %s", request.url.path, exc)
        return await refusal(request, QianfanError(Code.PROMPT_TOKENS_TOO_LONG))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return await refusal(request, QianfanError(Code.INTERNAL))
