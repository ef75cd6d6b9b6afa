"""Admin routes for an app's end-user memories, authenticated like chat, scoped to the calling app.

    POST /qfserve/v1/memory/list    {"user_id": "...", "api_path": optional}  → {"id", "result": [memory, ...]}
    POST /qfserve/v1/memory/delete  {"user_id": "...", "id": optional, "api_path": optional}
                                                                              → {"id", "result": {"deleted": n}}

An app only ever sees and deletes its own users' memories: every query carries its app id, so a
memory id belonging to another app simply matches nothing (deleted: 0), revealing nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from qfserve.api.deps import authenticated_app
from qfserve.api.errors import json_response
from qfserve.protocol.chat import check_user_id
from qfserve.protocol.errors import Code, QianfanError
from qfserve.protocol.ids import request_id
from qfserve.store import memories as memory_store
from qfserve.store.apps import App

router = APIRouter()


async def _body(request: Request) -> dict:
    # orjson, like the chat route: it refuses nesting deeper than 1024 instead of recursing.
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise QianfanError(Code.INVALID_JSON) from None
    if not isinstance(body, dict):
        raise QianfanError(Code.INVALID_JSON)
    return body


def _field(body: dict, name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise QianfanError(Code.INVALID_ARGUMENT, f"Invalid Argument: {name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or (kind is str and not value):
        raise QianfanError(Code.INVALID_ARGUMENT, f"Invalid Argument: {name} has an invalid type")
    return value


def _answer(request: Request, result: Any) -> Response:
    rid = getattr(request.state, "request_id", None) or request_id()
    return json_response({"id": rid, "result": result})


def _public(memory: memory_store.Memory) -> dict:
    shown = memory.as_dict()
    del shown["app_id"]  # the caller is the app; its internal row id means nothing to it
    return shown


@router.post("/qfserve/v1/memory/list")
async def list_memories(request: Request, app: App = Depends(authenticated_app)) -> Response:
    body = await _body(request)
    user_id = check_user_id(_field(body, "user_id", str, required=True))
    api_path = _field(body, "api_path", str)
    found = await asyncio.to_thread(
        memory_store.list_memories, request.app.state.store, user_id, app_id=app.id, api_path=api_path
    )
    return _answer(request, [_public(m) for m in found])


@router.post("/qfserve/v1/memory/delete")
async def delete_memories(request: Request, app: App = Depends(authenticated_app)) -> Response:
    body = await _body(request)
    user_id = check_user_id(_field(body, "user_id", str, required=True))
    memory_id = _field(body, "id", int)
    api_path = _field(body, "api_path", str)
    deleted = await asyncio.to_thread(
        memory_store.delete_memories, request.app.state.store, user_id,
        app_id=app.id, api_path=api_path, memory_id=memory_id,
    )
    return _answer(request, {"deleted": deleted})
