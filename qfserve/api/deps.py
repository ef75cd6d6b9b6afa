"""Authentication: an access token in the query or a bce-auth-v1 signature (v1), a bearer API key or
bearer token (v2). Every failure counts against the caller's address in the failed-auth throttle."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from qfserve.api.access_log import note
from qfserve.auth import bce
from qfserve.limits.base import LimitRefused
from qfserve.protocol.errors import SDK_RETRIED_CODES, Code, QianfanError
from qfserve.store import apps as app_store
from qfserve.store import bearer_tokens as bearer_store
from qfserve.store import tokens as token_store
from qfserve.store.apps import App

# Failures that count against the failed-auth throttle.
_AUTH_FAILURES = (Code.TOKEN_INVALID, Code.TOKEN_EXPIRED, Code.IAM_FAILED, Code.INVALID_PARAMETER)


def client_address(request: Request) -> str:
    """The peer's address; X-Forwarded-For counts only from a configured trusted proxy (uvicorn applies it)."""
    return request.client.host if request.client else "unknown"


def credential_id(request: Request) -> str | None:
    """What a failed request tried, for the throttle's per-credential count: the app an access token
    names (its `-<app id>` suffix), the IAM Access Key of a signature, or a v2 key's id."""
    token = request.query_params.get("access_token")
    if token:
        suffix = token.rpartition("-")[2]
        return f"app:{suffix}" if suffix.isdigit() and len(suffix) <= 20 else "token:malformed"
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bce-auth-v1/"):
        access_key = authorization.split("/")[1] if authorization.count("/") >= 1 else ""
        return f"iam:{access_key[:128]}"
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        # A v2 API key names its app in the middle (bce-v3/ALTAK-…/secret); a bearer token, as a whole.
        parts = key.strip().split("/")
        return f"bearer:{(parts[1] if len(parts) == 3 else parts[0])[:128]}"
    return None


async def authenticated_app(request: Request) -> App:
    """The calling app, or a QianfanError: 100 (no token), 110 (unknown/revoked), 111 (expired), 14 (IAM),
    or 18 when this failure comes from an address or for a credential with too many failures."""
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
    """Credentials are checked first; only a failure consults the failed-auth throttle, so valid
    credentials are never refused."""
    try:
        app = await authenticate(request)
        note(request, app=app.name)  # for the access log
        return app
    except QianfanError as error:
        throttle = getattr(request.app.state, "auth_throttle", None)
        if throttle is not None and error.code in _AUTH_FAILURES:
            address, credential = client_address(request), credential_id(request)
            if throttle.failed(address, credential):
                raise LimitRefused(Code.QPS_LIMIT, "auth_failures", throttle.retry_after(address, credential)) from None
        raise


async def _authenticate(request: Request) -> App:
    state = request.app.state
    authorization = request.headers.get("authorization", "")
    token = request.query_params.get("access_token")
    if not token and authorization.lower().startswith("bce-auth-v1/"):
        return await _verify_signature(request)
    if not token:
        raise QianfanError(Code.INVALID_PARAMETER)
    found = await state.store.read(token_store.lookup_token, state.store, token)
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
    app = await store.read(app_store.find_by_v2_key, store, key)
    if app is not None:
        return app
    found = await store.read(bearer_store.lookup_bearer_token, store, key)
    if found is None:
        raise QianfanError(Code.TOKEN_INVALID)
    app, expires_at = found
    if expires_at <= time.time():
        raise QianfanError(Code.TOKEN_EXPIRED)
    return app


async def _verify_signature(request: Request) -> App:
    from qfserve.store.apps import find_by_access_key

    state = request.app.state
    settings = state.settings
    store = state.store
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
    query = [(k, v) for k, v in request.query_params.multi_items()]
    # The body is read only to check a signed digest header (the middleware has already bounded it).
    body = await request.body() if bce.carries_body_digest(request.headers) else None
    now = time.time()
    app, auth = await asyncio.to_thread(
        bce.verify_request,
        request.method,
        raw_path,
        query,
        request.headers,
        lambda ak: find_by_access_key(store, ak),
        now=now,
        max_skew=settings.signature_clock_skew,
        max_expiration=settings.signature_max_expiration,
        body=body,
    )
    seen = getattr(state, "seen_signatures", None)
    if seen is not None:
        key = auth.access_key + "/" + auth.signature
        if not await seen.first_use(key, bce.replay_window(auth, now, settings.signature_clock_skew)):
            raise QianfanError(Code.IAM_FAILED)  # a replayed signature
        request.state.signature_key = key
    return app


async def release_signature(request: Request, error: QianfanError) -> None:
    """After a refusal the SDK retries by resending the request (2, 18, 336100, 336501, ...), which
    may be byte for byte the same signed request when its backoff is under a second: let its
    signature be used once more. A refused request did nothing, so a replay of it gains nothing."""
    key = getattr(request.state, "signature_key", None)
    seen = getattr(request.app.state, "seen_signatures", None)
    if key is not None and seen is not None and error.code in SDK_RETRIED_CODES:
        request.state.signature_key = None
        await seen.forget(key)
