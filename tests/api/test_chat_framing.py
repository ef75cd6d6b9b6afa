"""The HTTP layer on a scripted engine: SSE framing, sync joining, and engine refusals as wire codes.

The engine here is fake on purpose (deterministic text, forced failures); the real model is
exercised end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fastapi.testclient import TestClient

from qfserve.api.app import create_app
from qfserve.config import load_settings
from qfserve.engine.base import EngineOverloaded, EngineUnavailable, FinishEvent, TokenEvent
from scripted import ScriptedEngineBase, published

SCRIPT = ["你好", "，", "世界", "。", "Hello", " there", ".", " Bye"]


class ScriptedEngine(ScriptedEngineBase):
    """Emits SCRIPT one piece per token; `mode` forces a refusal or a mid-stream failure."""

    mode = "ok"

    def __init__(self, path: str):
        self.started = False
        self.cancelled = 0

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    @property
    def ready(self) -> bool:
        return self.started

    def generate(self, request):
        if ScriptedEngine.mode == "overloaded":
            raise EngineOverloaded()
        if ScriptedEngine.mode == "unavailable":
            raise EngineUnavailable()
        return self._run(request)

    async def _run(self, request):
        n = 0
        try:
            for piece in SCRIPT[: request.params.max_tokens]:
                await asyncio.sleep(0)
                n += 1
                if ScriptedEngine.mode == "fail_midway" and n == 5:
                    yield FinishEvent("error", len(request.prompt_tokens), n, error="boom")
                    return
                yield TokenEvent(token_id=n, text=piece, token_text=piece, logprob=-0.5)
            reason = "length" if request.params.max_tokens < len(SCRIPT) else "stop"
            yield FinishEvent(reason, len(request.prompt_tokens), n)
        except GeneratorExit:
            self.cancelled += 1
            raise


@pytest.fixture
def client(tmp_path):
    ScriptedEngine.mode = "ok"
    token = published(tmp_path, rpm=7, tpm=5000)
    app = create_app(load_settings(data_dir=tmp_path), engine_factory=ScriptedEngine)
    # Server exceptions must become wire bodies, not propagate: let the test see what a client sees.
    # A loopback client: /metrics answers only those when no metrics token is configured.
    with TestClient(app, raise_server_exceptions=False, client=("127.0.0.1", 50000)) as test_client:
        test_client.url = f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/svc?access_token={token}"
        yield test_client


BODY = {"messages": [{"role": "user", "content": "hi"}]}


def events(response) -> list[dict]:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [orjson.loads(line[len("data: "):]) for line in lines]


def test_sync_answer_joins_the_stream(client):
    response = client.post(client.url, json=BODY)
    body = response.json()
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    assert list(body) == ["id", "object", "created", "result", "is_truncated", "need_clear_history",
                          "finish_reason", "usage"]
    assert body["result"] == "".join(SCRIPT) and body["finish_reason"] == "normal" and not body["is_truncated"]
    assert body["usage"]["completion_tokens"] == len(SCRIPT)
    assert b"\n" not in response.content  # one line


def test_stream_is_sentence_chunked(client):
    response = client.post(client.url, json={**BODY, "stream": True})
    assert response.headers["content-type"] == "text/event-stream;charset=utf-8"
    assert response.headers["statement"] == "AI-generated"
    chunks = events(response)
    # The first visible text goes out at once; then clauses.
    assert [c["result"] for c in chunks] == ["你好", "，世界。", "Hello there.", " Bye", ""]
    assert [c["sentence_id"] for c in chunks] == [0, 1, 2, 3, 4]
    assert [c["is_end"] for c in chunks] == [False, False, False, False, True]
    assert len({c["id"] for c in chunks}) == 1 and all("usage" in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == len(SCRIPT)


def test_length_truncation(client):
    body = client.post(client.url, json={**BODY, "max_output_tokens": 3}).json()
    assert body["is_truncated"] is True and body["finish_reason"] == "length" and body["result"] == "你好，世界"


def test_logprobs_shape(client):
    body = client.post(client.url, json={**BODY, "logprobs": True, "top_logprobs": 2}).json()
    content = body["logprobs"]["content"]
    assert len(content) == len(SCRIPT) and content[0] == {"token": "你好", "logprob": -0.5, "top_logprobs": []}


def test_rate_limit_headers_count_down(client):
    first = client.post(client.url, json=BODY).headers
    second = client.post(client.url, json=BODY).headers
    assert first["x-ratelimit-limit-requests"] == "7" and first["x-ratelimit-limit-tokens"] == "5000"
    assert int(second["x-ratelimit-remaining-requests"]) == int(first["x-ratelimit-remaining-requests"]) - 1


@pytest.mark.parametrize("mode, code", [("overloaded", 336100), ("unavailable", 2)])
def test_engine_refusals_are_retryable_codes(client, mode, code):
    ScriptedEngine.mode = mode
    for stream in (False, True):
        response = client.post(client.url, json={**BODY, "stream": stream})
        assert response.status_code == 200 and response.json()["error_code"] == code
        assert response.headers["content-type"] == "application/json;charset=utf-8"


def test_error_after_first_chunk_is_a_data_line(client):
    ScriptedEngine.mode = "fail_midway"
    chunks = events(client.post(client.url, json={**BODY, "stream": True}))
    assert "".join(c.get("result", "") for c in chunks[:-1]) == "你好，世界。"
    assert chunks[-1]["error_code"] == 336000 and chunks[-1]["error_msg"] == "Internal error"


def test_unexpected_exception_is_336000_without_traceback(client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("qfserve.chat.serving.get_profile", explode)
    response = client.post(client.url, json=BODY)
    assert response.status_code == 200 and response.json()["error_code"] == 336000
    assert b"secret internals" not in response.content and b"Traceback" not in response.content
    ScriptedEngine.mode = "ok"
    monkeypatch.undo()
    assert client.post(client.url, json=BODY).json()["result"]


def test_metrics_and_health(client):
    client.post(client.url, json=BODY)
    text = client.get("/metrics").text
    for name in ("qfserve_time_to_first_token_seconds_count", "qfserve_inter_token_latency_seconds_count",
                 "qfserve_queue_time_seconds_count", "qfserve_request_seconds_count",
                 "qfserve_prompt_tokens_total", "qfserve_generated_tokens_total"):
        line = next(l for l in text.splitlines() if l.startswith(name + '{service="svc"}'))
        assert float(line.split()[-1]) > 0, line
    assert "qfserve_running_sequences" in text and "qfserve_waiting_sequences" in text
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
