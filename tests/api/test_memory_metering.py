"""Level-2 memory extraction is engine work done for a request: its tokens go to that request's TPM
count, and it queues behind live requests (a scripted engine makes it instant and countable)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from scripted import ScriptedEngineBase

from qfserve.api.app import create_app
from qfserve.config import load_settings
from qfserve.engine.base import FinishEvent, TokenEvent
from qfserve.store import apps, services, tokens
from qfserve.store.db import Store

TPM = 1_000_000
ANSWER = ["好", "的", "。"]


class CountingEngine(ScriptedEngineBase):
    requests: list = []

    def generate(self, request):
        CountingEngine.requests.append(request)
        return self._run(request)

    async def _run(self, request):
        for n, piece in enumerate(ANSWER, 1):
            await asyncio.sleep(0)
            yield TokenEvent(token_id=n, text=piece)
        yield FinishEvent("stop", len(request.prompt_tokens), len(ANSWER))


@pytest.fixture
def client(tmp_path):
    store = Store(tmp_path)
    creds = apps.create_app(store, "a")
    services.publish_service(store, "svc", model="default", profile="ERNIE-Speed-8K", rpm=1000, tpm=TPM)
    token, _, _ = tokens.issue_token(store, creds.app)
    store.close()
    CountingEngine.requests = []
    with TestClient(create_app(load_settings(data_dir=tmp_path), engine_factory=CountingEngine)) as test_client:
        test_client.url = f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/svc?access_token={token}"
        yield test_client


def held_tokens(client) -> int:
    """Tokens in the TPM window, read through a probe whose own prompt is taken out."""
    answer = client.post(client.url, json={"messages": [{"role": "user", "content": "x"}]})
    return TPM - int(answer.headers["X-Ratelimit-Remaining-Tokens"]) - answer.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("level", [1, 2])
def test_extraction_tokens_are_charged_to_the_request(client, level):
    body = {"messages": [{"role": "user", "content": "我叫韩梅梅，住在上海"}], "enable_user_memory": True,
            "user_id": "u1", "user_memory_extract_level": level}
    first = client.post(client.url, json=body).json()
    answered = first["usage"]["total_tokens"]
    deadline = time.monotonic() + 30
    while level == 2 and len(CountingEngine.requests) < 2:  # the extraction's generation
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)  # and its settle
    generations = len(CountingEngine.requests)
    held = held_tokens(client)
    if level == 1:
        assert held == answered and generations == 1  # the rules cost no engine tokens
        return
    extraction = CountingEngine.requests[1]
    assert extraction.priority > 0  # behind live requests
    assert extraction.params.max_tokens <= 256
    assert held == answered + len(extraction.prompt_tokens) + len(ANSWER)
