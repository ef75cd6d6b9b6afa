"""Authentication: an access token in the query or a bce-auth-v1 signature (v1), a bearer API key or
bearer token (v2). Every failure counts against the caller's address in the failed-auth throttle."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from qfserve.protocol.errors import Code, QianfanError
from qfserve.store import apps as app_store
from qfserve.store import bearer_tokens as bearer_store
from qfserve.store import tokens as token_store
from qfserve.store.apps import App


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def authenticated_app(request: Request) -> App:
    """The calling app, or a QianfanError: 100 (no token), 110 (unknown/revoked), 111 (expired), 14 (IAM)."""
    return await _throttled(request, _authenticate)


async def bearer_app(request: Request) -> App:
    """The v2 caller, from `Authorization: Bearer <v2 API key or bearer token>`; the same codes as v1
    (answered through their v2 twins): 100 no key, 110 unknown or revoked, 111 expired."""
    return await _throttled(request, _authenticate_bearer)


async def signed_app(request: Request) -> App:
    """The caller of a bce-auth-v1 signed request (the bearer-token endpoint): 14 on any failure,
    an unsigned request included."""
    return await _throttled(request, _verify_signature)


async def _throttled(request: Request, authenticate) -> App:
    state = request.app.state
    address = client_address(request)
    throttle = getattr(state, "auth_throttle", None)
    if throttle is not None:
        throttle.check(address)
    try:
        return await authenticate(request)
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


async def _authenticate_bearer(request: Request) -> App:
    store = request.app.state.store
    scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise QianfanError(Code.INVALID_PARAMETER)
    app = await asyncio.to_thread(app_store.find_by_v2_key, store, key)
    if app is not None:
        return app
    found = await asyncio.to_thread(bearer_store.lookup_bearer_token, store, key)
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
