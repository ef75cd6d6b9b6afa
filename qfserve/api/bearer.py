"""`GET /v1/BCE-BEARER/token?expireInSeconds=N`: Baidu IAM's bearer-token endpoint, for the v2 surface.

The qianfan SDK in v2 mode with AK/SK (QIANFAN_ACCESS_KEY / QIANFAN_SECRET_KEY) calls it first,
signed with bce-auth-v1 by the app's IAM Access Key, at QIANFAN_IAM_BASE_URL; the token it gets
back (`bce-v3/ALTAK-…/…`) is then its `Authorization: Bearer` on `/v2/chat/completions`.
Answers as IAM does: `{"userId","token","status","createTime","expireTime"}`, and failures as BCE
errors `{"requestId","code","message"}` with an HTTP status.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from qfserve.api.deps import signed_app
from qfserve.api.errors import json_response
from qfserve.protocol.errors import Code, QianfanError
from qfserve.protocol.ids import request_id
from qfserve.store import bearer_tokens as bearer_store

router = APIRouter()

PATH = "/v1/BCE-BEARER/token"
DEFAULT_TTL = 43200  # what the qianfan SDK asks for (BEARER_TOKEN_EXPIRED_INTERVAL)


def _time(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _bce_error(status: int, code: str, message: str, rid: str, headers: dict | None = None) -> Response:
    return json_response({"requestId": rid, "code": code, "message": message}, status=status, headers=headers)


def _ttl(request: Request) -> int | None:
    raw = request.query_params.get("expireInSeconds")
    if raw is None or raw == "":
        return DEFAULT_TTL
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= bearer_store.MAX_TTL:
        return None
    return int(raw)


@router.get(PATH)
async def bearer_token(request: Request) -> Response:
    rid = request_id()
    try:
        app = await signed_app(request)
    except QianfanError as error:
        if error.code == Code.QPS_LIMIT:  # the failed-auth throttle
            retry = {"Retry-After": str(int((error.retry_after or 1) + 0.999))}
            return _bce_error(429, "RequestLimitExceeded", "too many failed authentications", rid, retry)
        return _bce_error(403, "AccessDenied", "IAM Certification failed", rid)
    ttl = _ttl(request)
    if ttl is None:
        return _bce_error(400, "InvalidParameterValue",
                          f"expireInSeconds must be an integer in [1, {bearer_store.MAX_TTL}]", rid)
    token, created, expires = await asyncio.to_thread(bearer_store.issue_bearer_token, request.app.state.store,
                                                      app, ttl)
    return json_response({
        "userId": f"app-{app.id}",
        "token": token,
        "status": "enable",
        "createTime": _time(created),
        "expireTime": _time(expires),
    })
