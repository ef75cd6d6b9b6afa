"""`/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{api_path}`: parse bytes, call the domain, frame the answer."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from qfserve.api.access_log import note, note_usage
from qfserve.api.deps import authenticated_app
from qfserve.api.door import TICKET
from qfserve.api.errors import JSON_TYPE, refusal
from qfserve.limits.inflight import InFlightSlot
from qfserve.protocol import v1
from qfserve.protocol.chat import parse_chat_body, parse_chat_request
from qfserve.protocol.errors import Code, QianfanError
from qfserve.protocol.ids import request_id

router = APIRouter()

SSE_TYPE = "text/event-stream;charset=utf-8"
CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{api_path}"


def sse_event(payload: bytes) -> bytes:
    # Exactly `data: ` and one compact JSON object per event: the SDK rejects any other line.
    return b"data: " + payload + b"\n\n"


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


async def decode_body(raw: bytes):
    """The decoded body; a large one is decoded and validated in a worker thread (a 4 MB body may hold
    100,000 messages), handing serving a ChatRequest or the error it found (DeferredChatError)."""
    return _decode(raw) if len(raw) <= INLINE_DECODE_BYTES else await asyncio.to_thread(_decode_and_parse, raw)


@router.api_route(CHAT_PATH, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
async def chat(api_path: str, request: Request) -> Response:
    rid = request.state.request_id = request_id()
    note(request, service=api_path)
    if request.method != "POST":
        raise QianfanError(Code.INVALID_HTTP_METHOD)
    refuse_while_draining(request)
    app = await authenticated_app(request)
    body = await decode_body(await request.body())
    return await with_in_flight_slot(request, lambda slot: _answer(request, app, api_path, body, rid, slot))


def refuse_while_draining(request: Request) -> None:
    if getattr(request.app.state, "shutting_down", False):
        raise QianfanError(Code.SERVICE_UNAVAILABLE)  # draining after SIGTERM: retry elsewhere (the SDK retries 2)


async def with_in_flight_slot(request: Request, respond: Callable[[InFlightSlot], Awaitable[Response]]) -> Response:
    """The server's ceiling (code 4, at once), for both surfaces: a slot held until the answer's
    last byte, streams included (a SlotHoldingStream gives it back itself)."""
    slot = request.app.state.in_flight.acquire()
    streaming = False
    try:
        response = await respond(slot)
        streaming = isinstance(response, SlotHoldingStream)
        return response
    finally:
        if not streaming:
            slot.release()


async def _answer(request: Request, app, api_path: str, body, rid: str, slot: InFlightSlot) -> Response:
    serving = request.app.state.serving
    service = await serving.service_for(app, api_path)
    chat_request = parse_chat_request(body)
    prepared = await serving.prepare(app, service, chat_request, rid, ticket=getattr(request.state, TICKET, None))
    logprobs = prepared.params.logprobs
    if chat_request.stream:
        chunks = v1.render_stream(rid, serving.events(prepared), logprobs=logprobs)
        return await _stream(request, prepared, chunks, slot)
    try:
        answer = await unless_disconnected(
            request, v1.render_completion(rid, prepared.created, serving.events(prepared), logprobs=logprobs))
    except QianfanError as error:
        return await refusal(request, error, rid, headers=prepared.headers)
    note_usage(request, answer.usage)
    return Response(v1.dump(answer), media_type=JSON_TYPE, headers=prepared.headers)


class SlotHoldingStream(StreamingResponse):
    """A streaming answer that gives its in-flight slot back when it ends, however it ends
    (finished, client gone, cancelled): the generator's own `finally` does not run if it never starts."""

    def __init__(self, *args, slot: InFlightSlot, **kwargs):
        super().__init__(*args, **kwargs)
        self._slot = slot

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


async def _stream(request: Request, prepared, chunks, slot: InFlightSlot) -> Response:
    try:
        first = await chunks.__anext__()  # errors before the first chunk are a plain JSON body
    except QianfanError as error:
        await chunks.aclose()
        return await refusal(request, error, prepared.request_id, headers=prepared.headers)

    async def events() -> AsyncIterator[bytes]:
        try:
            note_usage(request, first.usage)
            yield sse_event(v1.dump(first))
            async for chunk in chunks:
                note_usage(request, chunk.usage)  # a client may leave mid-stream: keep the latest
                yield sse_event(v1.dump(chunk))
        except QianfanError as error:  # after the first chunk, errors travel as a data line
            note(request, code=error.code)
            yield sse_event(orjson.dumps(error.body(prepared.request_id)))
        finally:
            await chunks.aclose()

    headers = {"Cache-Control": "no-cache", **prepared.headers}
    return SlotHoldingStream(events(), media_type=SSE_TYPE, headers=headers, slot=slot)


async def unless_disconnected(request: Request, work):
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
