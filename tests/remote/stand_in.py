"""The remote-engine tests' OpenAI-compatible server: llama-cpp-python's own `llama_cpp.server`,
on the same GGUF as the embedded engine, with an adapter served as a second model alias.

Run as `python -m tests.remote.stand_in --port P --model GGUF [--alias NAME=LORA_GGUF]…`. Three
additions, none of which changes how the server answers:
- llama.cpp's extra (repacking) buffer types are turned off, as the embedded engine does
  (`use_extra_bufts = False`): on some CPUs they pick AMX kernels that fault;
- `GET /metrics` reports `vllm:num_requests_running` (vLLM's name), counted around
  llama-cpp-python's own completion generator, so a test sees an aborted generation end;
- `GET /debug/requests` returns the `/v1/completions` bodies received, and `/debug/generated` the
  token pieces each finished generation produced, so tests can check what the gateway sent.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

RUNNING = 0
RECEIVED: list[dict] = []
GENERATED: list[int] = []
_lock = threading.Lock()


def _patch_llama() -> None:
    import llama_cpp
    import llama_cpp.llama as high_level

    original_params = high_level.llama_cpp.llama_model_default_params

    def params():
        value = original_params()
        value.use_extra_bufts = False
        return value

    high_level.llama_cpp.llama_model_default_params = params

    original_completion = llama_cpp.Llama._create_completion

    def counted(self, *args, **kwargs):
        global RUNNING
        with _lock:
            RUNNING += 1
        pieces = 0
        try:
            for chunk in original_completion(self, *args, **kwargs):
                pieces += 1
                yield chunk
        finally:
            with _lock:
                RUNNING -= 1
                GENERATED.append(pieces)

    llama_cpp.Llama._create_completion = counted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", default="smollm2", help="the base model's alias")
    parser.add_argument("--alias", action="append", default=[], help="NAME=LORA_GGUF, served as another model")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    _patch_llama()
    import uvicorn
    from fastapi import Request
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.responses import JSONResponse, PlainTextResponse

    common = dict(n_ctx=args.n_ctx, n_threads=1, n_threads_batch=1, verbose=False, seed=0)
    models = [ModelSettings(model=args.model, model_alias=args.name, **common)]
    for spec in args.alias:
        name, lora = spec.split("=", 1)
        models.append(ModelSettings(model=args.model, model_alias=name, lora_path=lora, **common))
    server = ServerSettings(host="127.0.0.1", port=args.port, interrupt_requests=False, api_key=args.api_key)
    app = create_app(server_settings=server, model_settings=models)

    @app.middleware("http")
    async def record(request: Request, call_next):
        if request.url.path == "/v1/completions":
            body = await request.body()
            try:
                seen = json.loads(body)
            except ValueError:
                seen = {"unparsed": body.decode("utf-8", "replace")}
            RECEIVED.append({**seen, "_received_at": time.time()})
        return await call_next(request)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(f"vllm:num_requests_running {RUNNING}\n")

    @app.get("/debug/requests")
    async def requests_seen() -> JSONResponse:
        return JSONResponse(RECEIVED)

    @app.get("/debug/generated")
    async def generated() -> JSONResponse:
        return JSONResponse(GENERATED)

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
