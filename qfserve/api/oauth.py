"""`/oauth/2.0/token`: exchange an app's API Key / Secret Key for a 30-day access token (qianfan-wire.md §2)."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from qfserve.api.deps import client_address
from qfserve.api.errors import json_response
from qfserve.protocol.errors import BAD_SECRET, MISSING_PARAMETER, UNKNOWN_CLIENT, OAuthError
from qfserve.store import apps as app_store
from qfserve.store import tokens as token_store

router = APIRouter()

UNSUPPORTED_GRANT = ("unsupported_grant_type", "The authorization grant type is not supported")
# Too many failures from this address or for this API Key: OAuth-shaped, like every answer here.
THROTTLED = ("invalid_client", "too many failed attempts, try again later")
_FIELDS = ("grant_type", "client_id", "client_secret")


async def _credentials(request: Request) -> dict[str, str]:
    """Query string first; then a form body or a JSON object body (clients send `{}`, `""` or nothing)."""
    found = {k: v for k, v in request.query_params.items() if k in _FIELDS and v}
    body = await request.body()
    if body and not all(found.get(k) for k in _FIELDS):
        from_body: dict = {}
        try:
            decoded = orjson.loads(body)
            if isinstance(decoded, dict):
                from_body = decoded
        except orjson.JSONDecodeError:
            from_body = dict(parse_qsl(body.decode("utf-8", "replace")))
        for key in _FIELDS:
            value = from_body.get(key)
            if isinstance(value, str) and value and key not in found:
                found[key] = value
    return found


@router.api_route("/oauth/2.0/token", methods=["GET", "POST"])
async def token(request: Request) -> Response:
    state = request.app.state
    creds = await _credentials(request)
    if not all(creds.get(k) for k in _FIELDS):
        raise OAuthError(*MISSING_PARAMETER)
    if creds["grant_type"] != "client_credentials":
        raise OAuthError(*UNSUPPORTED_GRANT)
    app = await asyncio.to_thread(app_store.check_client, state.store, creds["client_id"], creds["client_secret"])
    if not app:
        # Credentials are checked first: a valid pair is never refused, whatever failed before it.
        throttle = getattr(state, "auth_throttle", None)
        if throttle is not None and throttle.failed(client_address(request), "ak:" + creds["client_id"][:128]):
            raise OAuthError(*THROTTLED, status=429)
        raise OAuthError(*(UNKNOWN_CLIENT if app is None else BAD_SECRET))
    access, refresh, _ = await asyncio.to_thread(token_store.issue_token, state.store, app)
    # Field order as Baidu sends it.
    return json_response({
        "refresh_token": refresh,
        "expires_in": token_store.TOKEN_TTL,
        "session_key": f"9mzdD{secrets.token_urlsafe(48)}",
        "access_token": access,
        "scope": "public brain_all_scope wenxinworkshop_mgr ai_custom_retail_image_stitch",
        "session_secret": secrets.token_hex(16),
    })
