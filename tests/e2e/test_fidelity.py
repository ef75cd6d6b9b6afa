"""The seed's parameters as the seed defines them, through the real server and model (issue 10)."""

from __future__ import annotations

import time
import uuid

import requests

HELLO = [{"role": "user", "content": "hi"}]


def post(server, token, body, api_path=None) -> requests.Response:
    return requests.post(server.chat_url(api_path), params={"access_token": token}, json=body, timeout=300)


def prompt_tokens(server, token, **fields) -> int:
    body = {"messages": HELLO, "max_output_tokens": 2, "temperature": 0.01, **fields}
    answer = post(server, token, body).json()
    assert "error_code" not in answer, answer
    return answer["usage"]["prompt_tokens"]


def test_user_setting_reaches_the_prompt_without_memory(server, token):
    # The seed lists user_setting beside the memory fields, not under them: it shapes every answer.
    plain = prompt_tokens(server, token)
    with_setting = prompt_tokens(server, token, user_setting="用户是一名退休的中学数学老师，喜欢简短的回答")
    assert with_setting > plain + 10
    # And with memory on, it is there too (the memory block carries it first).
    remembered = prompt_tokens(server, token, user_setting="用户是一名退休的中学数学老师，喜欢简短的回答",
                               enable_user_memory=True, user_id=f"u-{uuid.uuid4().hex[:8]}")
    assert remembered == with_setting


def test_an_app_over_its_rpm_is_refused_before_its_prompt_is_counted(server, token):
    server.cli("service", "publish", "rpm1", "--model", "default", "--rpm", "1", "--tpm", "10000000")
    assert "error_code" not in post(server, token, {"messages": HELLO, "max_output_tokens": 2}, "rpm1").json()
    # Far over the sequence's context (the test server runs 2048 cells): tokenizing it would answer
    # 336103; the app is already over its RPM, which is what it must hear, without that work.
    long_prompt = {"messages": [{"role": "user", "content": "北京天安门广场" * 500}], "max_output_tokens": 2}
    refused = post(server, token, long_prompt, "rpm1").json()
    assert (refused["error_code"], refused["error_msg"]) == (336501, "Rate limit reached for RPM")


def test_level_2_memory_extraction_is_charged_to_tpm(server, token):
    """The second generation that level-2 extraction runs is the app's work: its tokens count."""
    tpm = 10_000_000

    def excess_tokens(api_path: str, first_total: int):
        """Tokens the TPM window holds beyond the first request's usage, read with tiny probes
        (whose own tokens are known from their usage and taken out)."""
        probes = 0
        while True:
            answer = post(server, token, {"messages": HELLO, "max_output_tokens": 2}, api_path)
            usage = answer.json()["usage"]
            held = tpm - int(answer.headers["X-Ratelimit-Remaining-Tokens"]) - usage["prompt_tokens"] - probes
            probes += usage["total_tokens"]
            yield held - first_total

    for api_path, level in (("mem1", 1), ("mem2", 2)):
        server.cli("service", "publish", api_path, "--model", "default", "--rpm", "1000", "--tpm", str(tpm))
        body = {"messages": [{"role": "user", "content": "我叫韩梅梅，住在上海，喜欢喝咖啡"}], "max_output_tokens": 8,
                "temperature": 0.01, "enable_user_memory": True, "user_id": f"u-{uuid.uuid4().hex[:8]}",
                "user_memory_extract_level": level}
        first = post(server, token, body, api_path).json()
        assert "error_code" not in first, first
        time.sleep(1)  # the request's tokens are settled in the background, after its answer
        excess = excess_tokens(api_path, first["usage"]["total_tokens"])
        if level == 1:
            assert next(excess) == 0  # the rules cost no engine tokens
            continue
        deadline = time.monotonic() + 50  # counted while the request is in its 60 s window
        while (extra := next(excess)) <= 0 and time.monotonic() < deadline:  # until it settles
            time.sleep(0.5)
        assert extra > 20, extra  # the extraction's prompt and answer
