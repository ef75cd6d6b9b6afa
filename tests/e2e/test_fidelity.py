"""The seed's parameters as the seed defines them, through the real server and model (issue 10)."""

from __future__ import annotations

import time
import uuid

import requests
from conftest import cli_json

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


def test_level_2_memory_extraction_is_counted_in_the_apps_usage(server, token):
    """The second generation that level-2 extraction runs is the app's work: its tokens are recorded
    against the app and service (the TPM side, with a scripted engine: tests/api/test_memory_metering.py)."""

    def recorded(api_path: str) -> dict:
        apps = cli_json(server.data_dir, "app", "list")
        used = next(a for a in apps if a["name"] == "tester")["today"]["services"]
        return used.get(api_path, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})

    for api_path, level in (("mem1", 1), ("mem2", 2)):
        server.cli("service", "publish", api_path, "--model", "default", "--rpm", "1000", "--tpm", "10000000")
        body = {"messages": [{"role": "user", "content": "我叫韩梅梅，住在上海，喜欢喝咖啡"}], "max_output_tokens": 8,
                "temperature": 0.01, "enable_user_memory": True, "user_id": f"u-{uuid.uuid4().hex[:8]}",
                "user_memory_extract_level": level}
        first = post(server, token, body, api_path).json()
        assert "error_code" not in first, first
        answered = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
        deadline = time.monotonic() + 300  # a 256-token generation, slow on a busy machine
        while True:
            used = recorded(api_path)
            spent = used["prompt_tokens"] + used["completion_tokens"]
            if level == 1 and used["requests"] == 1:
                time.sleep(2)  # extraction by rules runs beside; nothing more may come
                assert recorded(api_path) == used and spent == answered  # the rules cost no engine tokens
                break
            if level == 2 and spent > answered:
                assert used["requests"] == 1 and spent > answered + 20  # the extraction's prompt and answer
                break
            assert time.monotonic() < deadline, used
            time.sleep(1)
