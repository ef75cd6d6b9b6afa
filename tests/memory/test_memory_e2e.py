"""Through a real server: a chat turn is remembered in the background, then recalled into the prompt."""

import time

import requests

USER = "e2e-memory-user"


def chat(server, token, content, **fields):
    # 8+ tokens: a turn whose answer is empty (2 tokens may be half a Chinese character, dropped) is
    # not remembered.
    body = {"messages": [{"role": "user", "content": content}], "max_output_tokens": 12, "min_output_tokens": 8,
            "temperature": 0.1,
            "enable_user_memory": True, "user_id": USER, **fields}
    answer = requests.post(server.chat_url(), params={"access_token": token}, json=body, timeout=120).json()
    assert "error_code" not in answer, answer
    return answer


def listed(server, token):
    url = f"{server.base_url}/qfserve/v1/memory/list"
    return requests.post(url, params={"access_token": token}, json={"user_id": USER}, timeout=30).json()["result"]


def test_chat_turn_is_remembered_then_recalled_into_the_prompt(server, token):
    chat(server, token, "我叫李雷，是一名医生，住在杭州", user_memory_extract_level=1)
    deadline = time.monotonic() + 30
    while len(memories := listed(server, token)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # extraction runs after the response, in the background
    assert sorted(m["text"] for m in memories) == ["用户住在杭州", "用户名叫李雷", "用户是一名医生"]

    question = "我住在哪个城市？"
    without = chat(server, token, question, user_memory_level=0)["usage"]["prompt_tokens"]
    with_memory = chat(server, token, question, user_memory_level=1)["usage"]["prompt_tokens"]
    assert with_memory > without  # the recalled block is in the prompt, and counted

    cleared = requests.post(f"{server.base_url}/qfserve/v1/memory/delete", params={"access_token": token},
                            json={"user_id": USER}, timeout=30).json()
    assert cleared["result"] == {"deleted": 3}
    assert listed(server, token) == []
