"""The official `qianfan` SDK (0.4.12.3), unmodified, against the real server: `do`, `do(stream=True)`,
`ado` and `astream` on `ChatCompletion(endpoint=<api_path>)`.

The SDK reads QIANFAN_* settings once per process, so every scenario runs in a fresh interpreter
with QIANFAN_AK / QIANFAN_SK = the app's API Key / Secret Key and QIANFAN_BASE_URL = the server.
The scenarios use their own service (`sdk_svc`, high RPM): the SDK's async calls go through a
rate limiter that breaks when it has to wait (qianfan-wire.md §4, a client bug).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ID_RE = re.compile(r"^as-[a-z0-9]{10}$")
API_PATH = "sdk_svc"
MAX_TOKENS = 16

PRELUDE = """
import asyncio, json, os, sys
import qianfan
def emit(obj):
    print("@@" + json.dumps(obj, ensure_ascii=False), flush=True)
def plain(resp):
    return {"status": resp.code, "headers": {k.lower(): v for k, v in dict(resp.headers).items()}, "body": resp.body}
chat = qianfan.ChatCompletion(endpoint=os.environ["E2E_API_PATH"])
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
MAX = int(os.environ["E2E_MAX_TOKENS"])
"""

SCENARIOS = {
    "do": """
resp = chat.do(messages=MESSAGES, max_output_tokens=MAX)
emit(plain(resp))
""",
    "do_multi_turn": """
resp = chat.do(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                         {"role": "user", "content": "Name a colour."}], max_output_tokens=MAX, temperature=0.5,
               top_p=0.8, penalty_score=1.0, system="You are brief.", stop=None)
emit(plain(resp))
""",
    "do_stream": """
for resp in chat.do(messages=MESSAGES, stream=True, max_output_tokens=MAX):
    emit(plain(resp))
""",
    "ado": """
async def main():
    emit(plain(await chat.ado(messages=MESSAGES, max_output_tokens=MAX)))
    await asyncio.sleep(0.5)
    emit(plain(await chat.ado(messages=MESSAGES, max_output_tokens=MAX)))
asyncio.run(main())
""",
    "astream": """
async def main():
    async for resp in await chat.ado(messages=MESSAGES, stream=True, max_output_tokens=MAX):
        emit(plain(resp))
asyncio.run(main())
""",
    "error": """
from qianfan.errors import APIError
try:
    chat.do(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], max_output_tokens=MAX)
    emit({"raised": None})
except APIError as exc:
    emit({"raised": "APIError", "code": exc.error_code, "msg": exc.error_msg})
""",
}


@pytest.fixture(scope="module")
def sdk_service(server):
    server.cli("service", "publish", API_PATH, "--model", "default", "--profile", "ERNIE-Speed-8K",
               "--rpm", "100000", "--tpm", "100000000")
    return API_PATH


def run_sdk(server, scenario: str, timeout: float = 600) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update(
        QIANFAN_AK=server.creds["api_key"],
        QIANFAN_SK=server.creds["secret_key"],
        QIANFAN_BASE_URL=server.base_url,
        QIANFAN_CONSOLE_API_BASE_URL=server.base_url,
        E2E_API_PATH=API_PATH,
        E2E_MAX_TOKENS=str(MAX_TOKENS),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    out = subprocess.run([sys.executable, "-c", PRELUDE + SCENARIOS[scenario]], env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"SDK scenario {scenario} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("@@")]


def check_usage(usage: dict) -> None:
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0
    assert 0 <= usage["completion_tokens"] <= MAX_TOKENS


def check_sync(resp: dict) -> dict:
    assert resp["status"] == 200
    body = resp["body"]
    assert "error_code" not in body, body
    assert ID_RE.match(body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["result"], str) and body["result"]
    assert body["need_clear_history"] is False
    check_usage(body["usage"])
    headers = resp["headers"]
    assert headers["statement"] == "AI-generated"
    assert headers["x-ratelimit-limit-requests"] == "100000"
    assert headers["x-ratelimit-limit-tokens"] == "100000000"
    return body


def check_stream(responses: list[dict]) -> str:
    assert responses, "the SDK yielded nothing"
    bodies = [r["body"] for r in responses]
    for index, body in enumerate(bodies):
        assert "error_code" not in body, body
        assert body["id"] == bodies[0]["id"]
        assert body["sentence_id"] == index
        assert body["is_end"] is (index == len(bodies) - 1)
        check_usage(body["usage"])
    assert ID_RE.match(bodies[0]["id"])
    assert responses[0]["headers"]["content-type"] == "text/event-stream;charset=utf-8"
    text = "".join(b["result"] for b in bodies)
    assert text
    return text


def test_sdk_do(server, sdk_service):
    [resp] = run_sdk(server, "do")
    body = check_sync(resp)
    assert body["usage"]["completion_tokens"] > 0


def test_sdk_do_multi_turn_with_langchain_style_params(server, sdk_service):
    [multi] = run_sdk(server, "do_multi_turn")
    body = check_sync(multi)
    # Three turns and a system prompt make a longer prompt than the single question.
    assert body["usage"]["prompt_tokens"] > 20


def test_sdk_do_stream(server, sdk_service):
    check_stream(run_sdk(server, "do_stream"))


def test_sdk_ado(server, sdk_service):
    first, second = run_sdk(server, "ado")
    a, b = check_sync(first), check_sync(second)
    assert a["id"] != b["id"]


def test_sdk_astream(server, sdk_service):
    check_stream(run_sdk(server, "astream"))


def test_sdk_business_error_raises_api_error(server, sdk_service):
    [found] = run_sdk(server, "error")
    assert found == {"raised": "APIError", "code": 336006, "msg": "the length of messages must be an odd number"}
