"""A small vLLM-shaped replica for function calling through the remote engine: `/tokenize` counts a
conversation (one token per message, tools add one each), `/v1/chat/completions` answers as vLLM's
tool machinery would — a call streamed in pieces (name, then the arguments in two halves) when tools
are offered and not refused, JSON content for a `response_format`, text otherwise — and
`/v1/completions` answers the plain requests (the publish check). `GET /debug/requests` returns
every body received, with its path, so tests check what the gateway sent.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .scripted import ScriptedReplica

MODEL = "tooly"
ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
JSON_ANSWER = '{"name": "Ann", "age": 30}'
USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def delta(content=None, tool_calls=None, finish=None) -> bytes:
    piece = {}
    if content is not None:
        piece["content"] = content
    if tool_calls is not None:
        piece["tool_calls"] = tool_calls
    return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL,
                "choices": [{"index": 0, "delta": piece, "finish_reason": finish}]})


def make_app() -> Starlette:
    received: list[dict] = []

    async def health(request: Request) -> Response:
        return JSONResponse({})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "owned_by": "vllm", "max_model_len": 4096}]})

    async def tokenize(request: Request) -> Response:
        body = await request.json()
        received.append({"path": "/tokenize", **body})
        count = len(body["messages"]) + len(body.get("tools") or [])
        return JSONResponse({"count": count, "tokens": list(range(1, count + 1)), "max_model_len": 4096})

    async def completions(request: Request) -> Response:
        body = await request.json()
        received.append({"path": "/v1/completions", **body})

        async def plain():
            yield sse({"choices": [{"index": 0, "text": "Hi.", "token_ids": [7], "finish_reason": "stop"}]})
            yield b"data: [DONE]\n\n"
        return StreamingResponse(plain(), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        body = await request.json()
        received.append({"path": "/v1/chat/completions", **body})
        tools, choice = body.get("tools"), body.get("tool_choice", "auto")

        async def answer():
            yield sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            if tools and choice != "none":
                name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
                half = len(ARGUMENTS) // 2
                yield delta(tool_calls=[{"index": 0, "id": "chatcmpl-tool-1", "type": "function",
                                         "function": {"name": name, "arguments": ""}}])
                yield delta(tool_calls=[{"index": 0, "function": {"arguments": ARGUMENTS[:half]}}])
                yield delta(tool_calls=[{"index": 0, "function": {"arguments": ARGUMENTS[half:]}}])
                yield delta(finish="tool_calls")
            elif body.get("response_format"):
                # A forced call asked as a JSON answer of its function's parameters (tools.py).
                schema_name = body["response_format"].get("json_schema", {}).get("name")
                answer = ARGUMENTS if tools and schema_name in {t["function"]["name"] for t in tools} else JSON_ANSWER
                yield delta(answer[:10])
                yield delta(answer[10:], finish="stop")
            else:
                yield delta("Sunny, ")
                yield delta("21 degrees.", finish="stop")
            yield sse({"choices": [], "usage": USAGE})
            yield b"data: [DONE]\n\n"
        return StreamingResponse(answer(), media_type="text/event-stream")

    async def debug(request: Request) -> Response:
        return JSONResponse(received)

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models", models), Route("/tokenize", tokenize, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]), Route("/debug/requests", debug),
    ])


class ToolReplica(ScriptedReplica):
    def __init__(self) -> None:
        super().__init__(app=make_app())
