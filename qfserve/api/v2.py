"""The v2 surface: `POST /v2/chat/completions` and `GET /v2/models` (Qianfan v2, OpenAI-compatible).

Same request path as v1 (serving's `service_for` → `prepare` → `events`), other ends: the body is
parsed by `protocol/v2.py`, the answer rendered as OpenAI deltas ending with `data: [DONE]`, and
errors answered with a real HTTP status (`protocol/v2_errors.py`; api/errors.py picks the surface).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from qfserve.api.access_log import note, note_usage
from qfserve.api.chat import (
    SSE_TYPE,
    SlotHoldingStream,
    decode_body,
    refuse_while_draining,
    sse_event,
    unless_disconnected,
    with_in_flight_slot,
)
from qfserve.api.deps import bearer_app
from qfserve.api.errors import JSON_TYPE, json_response, refusal
from qfserve.limits.inflight import InFlightSlot
from qfserve.limits.base import Budget
from qfserve.protocol import v2
from qfserve.protocol.errors import Code, QianfanError
from qfserve.protocol.ids import request_id
from qfserve.protocol.v2_errors import twin_of
from qfserve.store import apps as app_store
from qfserve.store import services as service_store

router = APIRouter()

CHAT_PATH = "/v2/chat/completions"
DONE = b"data: [DONE]\n\n"


def rate_limit_headers(budget: Budget) -> dict[str, str]:
    """v2's headers. A service has one TPM budget that input and output tokens both draw on, so
    the input and output forms report the same figures."""
    tokens, remaining_tokens = str(budget.limit_tokens), str(max(0, budget.remaining_tokens))
    return {
        "Statement": "AI-generated",
        "X-Ratelimit-Limit-Requests": str(budget.limit_requests),
        "X-Ratelimit-Remaining-Requests": str(max(0, budget.remaining_requests)),
        "X-Ratelimit-Limit-Input-Tokens": tokens,
        "X-Ratelimit-Limit-Output-Tokens": tokens,
        "X-Ratelimit-Remaining-Input-Tokens": remaining_tokens,
        "X-Ratelimit-Remaining-Output-Tokens": remaining_tokens,
    }


async def _service(serving, app, model: str):
    """The service named by `model`, with errors that name it too."""
    try:
        return await serving.service_for(app, model)
    except QianfanError as error:
        if error.code == Code.API_NOT_EXIST:
            raise QianfanError(Code.API_NOT_EXIST, f"The model {model!r} does not exist") from None
        if error.code == Code.NO_PERMISSION:
            raise QianfanError(Code.NO_PERMISSION, f"This API key may not call the model {model!r}") from None
        raise


@router.post(CHAT_PATH)
async def chat_completions(request: Request) -> Response:
    # An `appid` header (Qianfan's v2 app id) is accepted and not needed: the key names the app.
    rid = request.state.request_id = request_id()
    refuse_while_draining(request)
    app = await bearer_app(request)
    body = await decode_body(await request.body())
    return await with_in_flight_slot(request, lambda slot: _answer(request, app, body, rid, slot))


async def _answer(request: Request, app, body, rid: str, slot: InFlightSlot) -> Response:
    serving = request.app.state.serving
    model = v2.parse_model(body)
    note(request, service=model)
    service = await _service(serving, app, model)
    parsed = v2.parse_chat_request(body)
    prepared = await serving.prepare(app, service, parsed.chat, rid)
    headers = rate_limit_headers(prepared.reservation.budget)
    logprobs = prepared.params.logprobs
    events = serving.events(prepared)
    if parsed.chat.stream:
        chunks = v2.render_stream(rid, parsed.model, prepared.created, events, logprobs=logprobs,
                                  include_usage=parsed.include_usage)
        return await _stream(request, rid, chunks, headers, slot)
    try:
        answer = await unless_disconnected(
            request, v2.render_completion(rid, parsed.model, prepared.created, events, logprobs=logprobs))
    except QianfanError as error:
        return await refusal(request, error, rid, headers=headers)
    note_usage(request, answer.usage)
    return Response(v2.dump(answer), media_type=JSON_TYPE, headers=headers)


async def _stream(request: Request, rid: str, chunks, headers: dict, slot: InFlightSlot) -> Response:
    try:
        first = await chunks.__anext__()  # errors before the first chunk get their HTTP status
    except QianfanError as error:
        await chunks.aclose()
        return await refusal(request, error, rid, headers=headers)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield sse_event(v2.dump(first))
            async for chunk in chunks:
                if chunk.usage is not None:
                    note_usage(request, chunk.usage)
                yield sse_event(v2.dump(chunk))
            yield DONE
        except QianfanError as error:  # after the first chunk: an error event (OpenAI clients raise it)
            note(request, code=error.code)
            yield sse_event(orjson.dumps(twin_of(error).body(rid)))
        finally:
            await chunks.aclose()

    return SlotHoldingStream(events(), media_type=SSE_TYPE, headers={"Cache-Control": "no-cache", **headers},
                             slot=slot)


def _model_entry(service: service_store.Service) -> dict:
    return {"id": service.api_path, "object": "model", "created": service.created_at, "owned_by": "qfserve"}


def _callable_services(store, app) -> list[service_store.Service]:
    return [s for s in service_store.list_services(store) if app_store.may_call(store, app, s.api_path)]


@router.get("/v2/models")
async def list_models(request: Request) -> Response:
    """The services this key may call, in OpenAI's list shape."""
    request.state.request_id = request_id()
    app = await bearer_app(request)
    services = await asyncio.to_thread(_callable_services, request.app.state.store, app)
    return json_response({"object": "list", "data": [_model_entry(s) for s in services]})


@router.get("/v2/models/{model}")
async def get_model(model: str, request: Request) -> Response:
    request.state.request_id = request_id()
    app = await bearer_app(request)
    service = await _service(request.app.state.serving, app, model)
    return json_response(_model_entry(service))
