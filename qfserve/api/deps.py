"""Authentication as a FastAPI dependency: an access token in the query, or a bce-auth-v1 signature."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from qfserve.api.access_log import note
from qfserve.protocol.errors import Code, QianfanError
from qfserve.store import tokens as token_store
from qfserve.store.apps import App


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def authenticated_app(request: Request) -> App:
    """The calling app, or a QianfanError: 100 (no token), 110 (unknown/revoked), 111 (expired), 14 (IAM)."""
    state = request.app.state
    address = client_address(request)
    throttle = getattr(state, "auth_throttle", None)
    if throttle is not None:
        throttle.check(address)
    try:
        app = await _authenticate(request)
        note(request, app=app.name)  # for the access log
        return app
    except QianfanError as error:
        if throttle is not None and error.code in (Code.TOKEN_INVALID, Code.TOKEN_EXPIRED, Code.IAM_FAILED,
                                                    Code.INVALID_PARAMETER):
            throttle.record_failure(address)
        raise


async def _authenticate(request: Request) -> App:
    state = request.app.state
    authorization = request.headers.get("authorization", "")
    token = request.query_params.get("access_token")
    if not token and authorization.lower().startswith("bce-auth-v1/"):
        return await _verify_signature(request)
    if not token:
        raise QianfanError(Code.INVALID_PARAMETER)
    found = await asyncio.to_thread(token_store.lookup_token, state.store, token)
    if found is None:
        raise QianfanError(Code.TOKEN_INVALID)
    app, expires_at = found
    if expires_at <= time.time():
        raise QianfanError(Code.TOKEN_EXPIRED)
    return app


async def _verify_signature(request: Request) -> App:
    from qfserve.auth import bce
    from qfserve.store.apps import find_by_access_key

    settings = request.app.state.settings
    store = request.app.state.store
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
    query = [(k, v) for k, v in request.query_params.multi_items()]
    app = await asyncio.to_thread(
        bce.verify,
        request.method,
        raw_path,
        query,
        request.headers,
        lambda ak: find_by_access_key(store, ak),
        now=time.time(),
        max_skew=settings.signature_clock_skew,
        max_expiration=settings.signature_max_expiration,
    )
    return app
