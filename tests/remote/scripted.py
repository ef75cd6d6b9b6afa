"""A scripted vLLM-shaped replica for faults a real server cannot be made to produce on cue.

Models (by the request's `model`): `fine` answers `greeting`; `garbage` streams a line that is not
JSON; `cut` drops the connection after two chunks; `hang` sends nothing; `toolong` answers vLLM's
context-length refusal; `bigrank` gets vLLM's refusal of a LoRA rank over --max-lora-rank;
`unlisted` is not served and cannot be loaded; `loadable` is loaded at run time. The publish check's one-token "hi" is answered
properly by every model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import uvicorn
from conftest import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ["fine", "garbage", "cut", "hang", "toolong", "bigrank", "unlisted"]
CHECK_TOKENS = [9]  # the publish check's "hi": answered properly by every model


def chunk(text: str, finish=None) -> bytes:
    body = {"choices": [{"index": 0, "text": text, "token_ids": [5], "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def health(request: Request) -> Response:
    return JSONResponse({})


async def models(request: Request) -> Response:
    listed = [m for m in MODELS if m != "unlisted"]
    return JSONResponse({"object": "list", "data": [{"id": m, "owned_by": "vllm", "max_model_len": 2048}
                                                    for m in listed]})


async def tokenize(request: Request) -> Response:
    body = await request.json()
    hi = body["messages"][-1]["content"] == "hi"
    return JSONResponse({"count": 1 if hi else 3, "tokens": CHECK_TOKENS if hi else [1, 2, 3],
                         "max_model_len": 2048})


async def load_lora(request: Request) -> Response:
    body = await request.json()
    if body["lora_name"] == "bigrank":  # vLLM's answer for a rank above --max-lora-rank
        return JSONResponse({"error": {"message": "LoRA rank 64 is greater than max_lora_rank 8.",
                                       "type": "InternalServerError", "param": None, "code": 500}}, 500)
    if body["lora_name"] == "loadable":  # vLLM answers a successful load in plain text
        return Response(f"Success: LoRA adapter '{body['lora_name']}' added successfully.", 200)
    return Response(status_code=404)  # runtime LoRA updating not enabled


async def completions(request: Request) -> Response:
    body = await request.json()
    model = body["model"]
    if body["prompt"] == CHECK_TOKENS or model == "fine":
        async def good():
            yield chunk(request.app.state.greeting, None)
            yield chunk("", "stop")
            yield b"data: [DONE]\n\n"
        return StreamingResponse(good(), media_type="text/event-stream")
    if model == "toolong":  # vLLM's refusal when prompt + max_tokens exceed --max-model-len
        return JSONResponse({"error": {"message": "This model's maximum context length is 2048 tokens. However, you "
                                                  "requested 2100 tokens (100 in the messages, 2000 in the "
                                                  "completion). Please reduce the length of the messages or "
                                                  "completion.", "type": "BadRequestError", "param": None,
                                       "code": 400}}, 400)
    if model == "garbage":
        async def garbage():
            yield b"data: <html>Bad Gateway</html>\n\n"
        return StreamingResponse(garbage(), media_type="text/event-stream")
    if model == "cut":
        async def cut():
            yield chunk("Hello there. ")
            yield chunk("More words. ")
            await asyncio.sleep(0.3)
            raise RuntimeError("replica died mid-stream")  # uvicorn drops the connection
        return StreamingResponse(cut(), media_type="text/event-stream")
    if model == "hang":
        async def hang():
            await asyncio.sleep(60)
            yield chunk("too late")
        return StreamingResponse(hang(), media_type="text/event-stream")
    return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, 404)


def make_app(greeting: str) -> Starlette:
    app = Starlette(routes=[
        Route("/health", health), Route("/v1/models", models), Route("/tokenize", tokenize, methods=["POST"]),
        Route("/v1/load_lora_adapter", load_lora, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ])
    app.state.greeting = greeting
    return app


class ScriptedReplica:
    """A fake replica served from a thread of this process (`with ScriptedReplica() as replica`)."""

    def __init__(self, greeting: str = "Hello.", app: Starlette | None = None) -> None:
        self.port = free_port()
        app = app if app is not None else make_app(greeting)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
