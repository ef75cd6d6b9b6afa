"""`/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{api_path}`: parse bytes, call the domain, frame the answer."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from qfserve.api.deps import authenticated_app, release_signature
from qfserve.api.errors import error_response, json_response
from qfserve.protocol.chat import parse_chat_body
from qfserve.protocol.errors import Code, QianfanError
from qfserve.protocol.ids import request_id

router = APIRouter()

SSE_TYPE = "text/event-stream;charset=utf-8"
CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{api_path}"


def sse_event(payload: dict) -> bytes:
    # Exactly `data: ` and one compact JSON object per event: the SDK rejects any other line.
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# Bodies above this are decoded in a worker thread, so a large one doesn't hold the event loop.
INLINE_DECODE_BYTES = 64 * 1024


def _decode(raw: bytes):
    # Any Content-Type: the seed's curl example sends a form type with a JSON body.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise QianfanError(Code.INVALID_JSON) from None


def _decode_and_parse(raw: bytes):
    return parse_chat_body(_decode(raw))


async def _decode_body(raw: bytes):
    """The decoded body; a large one is decoded and validated in a worker thread (a 4 MB body may hold
    100,000 messages), handing serving a ChatRequest or the error it found (DeferredChatError)."""
    return _decode(raw) if len(raw) <= INLINE_DECODE_BYTES else await asyncio.to_thread(_decode_and_parse, raw)


@router.api_route(CHAT_PATH, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
async def chat(api_path: str, request: Request) -> Response:
    rid = request.state.request_id = request_id()
    if request.method != "POST":
        raise QianfanError(Code.INVALID_HTTP_METHOD)
    app = await authenticated_app(request)
    body = await _decode_body(await request.body())
    serving = request.app.state.serving
    prepared = await serving.prepare(app, api_path, body, rid)
    if prepared.request.stream:
        return await _stream(request, serving, prepared)
    try:
        answer = await _unless_disconnected(request, serving.complete(prepared))
    except QianfanError as error:
        await release_signature(request, error)
        return error_response(error, rid, headers=prepared.headers)
    return json_response(answer, headers=prepared.headers)


async def _stream(request: Request, serving, prepared) -> Response:
    chunks = serving.stream(prepared)
    try:
        first = await chunks.__anext__()  # errors before the first chunk are a plain JSON body
    except QianfanError as error:
        await chunks.aclose()
        await release_signature(request, error)
        return error_response(error, prepared.request_id, headers=prepared.headers)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield sse_event(first)
            async for chunk in chunks:
                yield sse_event(chunk)
        except QianfanError as error:  # after the first chunk, errors travel as a data line
            yield sse_event(error.body(prepared.request_id))
        finally:
            await chunks.aclose()

    headers = {"Cache-Control": "no-cache", **prepared.headers}
    return StreamingResponse(events(), media_type=SSE_TYPE, headers=headers)


async def _unless_disconnected(request: Request, work):
    """Run `work`, cancelling it (and so its engine sequence) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()
