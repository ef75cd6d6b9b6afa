"""Console routes the SDK calls in AK/SK mode (qianfan-wire.md §1)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from qfserve.api.chat import CHAT_PATH
from qfserve.api.deps import authenticated_app
from qfserve.api.errors import json_response
from qfserve.protocol.ids import request_id
from qfserve.store import apps as app_store
from qfserve.store import services as service_store

router = APIRouter()


def public_base_url(settings) -> str:
    """Where clients reach this server: the configured public URL, never the caller's Host header."""
    return (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")


@router.post("/wenxinworkshop/service/list")
async def service_list(request: Request) -> Response:
    request.state.request_id = request_id()
    app = await authenticated_app(request)
    store = request.app.state.store

    def visible() -> list[dict]:
        base = public_base_url(request.app.state.settings)
        return [
            {"name": s.api_path, "url": base + CHAT_PATH.format(api_path=s.api_path), "apiType": "chat",
             "chargeStatus": "NOTOPEN", "versionList": [{"trainType": s.profile, "serviceStatus": "Done"}]}
            for s in service_store.list_services(store)
            if app_store.may_call(store, app, s.api_path)
        ]

    custom = await asyncio.to_thread(visible)
    return json_response({"log_id": request.state.request_id, "result": {"common": [], "custom": custom}})
