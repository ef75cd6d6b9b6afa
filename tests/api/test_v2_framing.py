"""The v2 HTTP layer on a scripted engine: token-delta framing, `[DONE]`, and the failures a real
model will not produce on demand (an overloaded or dead engine, an engine error mid-answer, an
unexpected exception) answered with their v2 status, code and type.

The real model and real clients run the same routes in tests/e2e/test_v2.py.
"""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient
from test_chat_framing import SCRIPT, ScriptedEngine

from qfserve.api.app import create_app
from qfserve.config import load_settings
from qfserve.store import apps, services
from qfserve.store.db import Store

BODY = {"model": "svc", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def client(tmp_path):
    ScriptedEngine.mode = "ok"
    store = Store(tmp_path)
    creds = apps.create_app(store, "a")
    services.publish_service(store, "svc", model="default", profile="ERNIE-Speed-8K", rpm=50, tpm=5000)
    store.close()
    settings = load_settings(data_dir=tmp_path, auth_fail_limit=3)
    with TestClient(create_app(settings, engine_factory=ScriptedEngine), raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {creds.v2_api_key}"
        yield test_client
    ScriptedEngine.mode = "ok"


def sse(response) -> list:
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "" and all(b.startswith("data: ") for b in blocks[:-1]), response.text
    return [b[len("data: "):] for b in blocks[:-1]]


def assert_v2_error(response, status: int, code: str, type_: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    body = response.json()
    assert (body["error"]["code"], body["error"]["type"]) == (code, type_), body
    return body


def test_stream_is_one_event_per_token_then_done(client):
    response = client.post("/v2/chat/completions", json={**BODY, "stream": True})
    assert response.headers["content-type"] == "text/event-stream;charset=utf-8"
    assert response.headers["statement"] == "AI-generated"
    data = sse(response)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [*SCRIPT, None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_truncation_is_length(client):
    body = client.post("/v2/chat/completions", json={**BODY, "max_tokens": 3}).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["choices"][0]["message"]["content"] == "你好，世界"


@pytest.mark.parametrize("mode,code", [("overloaded", "server_overloaded"), ("unavailable", "service_unavailable")])
def test_engine_refusals_are_503(client, mode, code):
    ScriptedEngine.mode = mode
    for stream in (False, True):
        assert_v2_error(client.post("/v2/chat/completions", json={**BODY, "stream": stream}), 503, code,
                        "server_error")


def test_engine_error_mid_answer(client):
    ScriptedEngine.mode = "fail_midway"
    assert_v2_error(client.post("/v2/chat/completions", json=BODY), 500, "internal_error", "server_error")
    data = sse(client.post("/v2/chat/completions", json={**BODY, "stream": True}))
    chunks = [orjson.loads(d) for d in data]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == "".join(SCRIPT[:4])
    # After the first chunk the error travels as an event, which OpenAI clients raise; no [DONE].
    assert chunks[-1]["error"] == {"code": "internal_error", "message": "Internal error", "type": "server_error"}
    assert chunks[-1]["id"] == chunks[0]["id"]


def test_unexpected_exception_is_500_without_traceback(client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("qfserve.chat.serving.get_profile", explode)
    response = client.post("/v2/chat/completions", json=BODY)
    assert_v2_error(response, 500, "internal_error", "server_error")
    assert b"secret internals" not in response.content and b"Traceback" not in response.content


def test_failed_auth_throttle_is_429_with_retry_after(client):
    wrong = {"Authorization": "Bearer wrong"}
    for _ in range(3):
        assert_v2_error(client.post("/v2/chat/completions", json=BODY, headers=wrong),
                        401, "invalid_iam_token", "access_denied")
    throttled = client.post("/v2/chat/completions", json=BODY, headers=wrong)  # one failure too many
    assert_v2_error(throttled, 429, "user_rate_limit_exceeded", "rate_limit_exceeded")
    assert 50 <= int(throttled.headers["retry-after"]) <= 60  # the rest of the 60 s window
    # Valid credentials are never refused by the failed-auth throttle (issue 16).
    assert client.post("/v2/chat/completions", json=BODY).status_code == 200


def test_v1_routes_keep_v1_errors(client):
    # Surfaces pick their error shape by path: a v1 route still answers HTTP 200 with error_code.
    response = client.post("/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/svc", json={"messages": []})
    assert response.status_code == 200 and response.json()["error_code"] == 100
