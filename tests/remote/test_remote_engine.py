"""The remote engine end to end: a gateway in front of real OpenAI-compatible replicas.

Against llama-cpp-python's server by default (two replicas), against vLLM with `make test-vllm`.
What each replica received is read back from the stand-in (`/debug/requests`), so the parameter
mapping is checked on the wire; vLLM has no such page, so there only its effects are checked.
"""

from __future__ import annotations

import json
import socket
import time

import orjson
import pytest
import requests

from .conftest import PERSONA_NAME, RemoteSetup

QUESTION = [{"role": "user", "content": "Tell me about the city of Paris."}]


def sse_chunks(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]


def wait_for(predicate, what: str, limit: float = 60.0, every: float = 0.1):
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(every)


def all_bodies(remote: RemoteSetup) -> list[dict]:
    """What the replicas received, oldest first."""
    return sorted((b for r in remote.replicas for b in r.received()), key=lambda b: b["_received_at"])


def last_body(remote: RemoteSetup) -> dict:
    return all_bodies(remote)[-1]


def test_answer_and_prompt_count_match_the_embedded_engine(remote):
    """The remote count of the prompt is the embedded count: same template, same tokenizer."""
    from qfserve.engine.prompt import ChatPrompt, default_model_path

    answer = remote.post("rsvc", {"messages": QUESTION, "max_output_tokens": 12}).json()
    assert "error_code" not in answer, answer
    assert answer["object"] == "chat.completion" and answer["result"]
    embedded = ChatPrompt(default_model_path()).chat_tokens(QUESTION)
    assert answer["usage"]["prompt_tokens"] == len(embedded)
    assert 1 <= answer["usage"]["completion_tokens"] <= 12
    if not remote.vllm:
        # The tokens counted are the tokens run: the text sent is the text counted.
        sent = last_body(remote)
        assert sent["prompt"] == ChatPrompt(default_model_path()).render(QUESTION)


def test_every_mapped_parameter_reaches_the_replica(remote):
    body = {"messages": QUESTION, "temperature": 0.5, "top_p": 0.6, "penalty_score": 1.3,
            "max_output_tokens": 9, "min_output_tokens": 3, "frequency_penalty": 0.4,
            "presence_penalty": 0.2, "stop": ["zzz"], "logprobs": True, "top_logprobs": 2}
    answer = remote.post("rsvc", body).json()
    assert "error_code" not in answer, answer
    assert 3 <= answer["usage"]["completion_tokens"] <= 9
    if remote.vllm:
        return
    sent = last_body(remote)
    assert sent["temperature"] == 0.5 and sent["top_p"] == 0.6
    assert sent["repeat_penalty"] == 1.3  # llama-cpp-python's name for vLLM's repetition_penalty
    assert sent["max_tokens"] == 9 and sent["min_tokens"] == 3
    assert sent["frequency_penalty"] == 0.4 and sent["presence_penalty"] == 0.2
    assert sent["logprobs"] == 2
    # The embedded engine's defaults, sent explicitly.
    assert sent["top_k"] == 40 and sent["min_p"] == 0.05
    assert sent["stream"] is True
    assert "stop" not in sent  # matched by the gateway for this server (see dialect.py)


def test_max_output_tokens_truncates(remote):
    answer = remote.post("rsvc", {"messages": QUESTION, "max_output_tokens": 3, "min_output_tokens": 3}).json()
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["is_truncated"] is True and answer["finish_reason"] == "length"


def test_stop_string_ends_the_answer_before_it(remote):
    plain = remote.post("rsvc", {"messages": QUESTION, "top_p": 0, "max_output_tokens": 40}).json()["result"]
    words = [w for w in plain.split() if w.isalpha() and len(w) > 3]
    assert len(words) > 3, plain
    stop = words[2]
    stopped = remote.post("rsvc", {"messages": QUESTION, "top_p": 0, "max_output_tokens": 40,
                                   "stop": [stop]}).json()
    assert stopped["finish_reason"] == "stop", stopped
    assert stop not in stopped["result"]
    assert plain.startswith(stopped["result"].rstrip()), (plain, stopped["result"])


def test_logprobs_stream_with_alternatives(remote):
    text = remote.post("rsvc", {"messages": QUESTION, "stream": True, "max_output_tokens": 8,
                                "min_output_tokens": 8, "logprobs": True, "top_logprobs": 2}).text
    chunks = sse_chunks(text)
    entries = [e for c in chunks for e in c.get("logprobs", {}).get("content", [])]
    assert entries, text
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries), entries
    assert "".join(e["token"] for e in entries) == "".join(c["result"] for c in chunks)
    assert chunks[-1]["is_end"] is True and chunks[-1]["usage"]["completion_tokens"] == 8


SDK_SCRIPT = """
import json, os
import qianfan
chat = qianfan.ChatCompletion(endpoint=os.environ["E2E_API_PATH"])
messages = [{"role": "user", "content": "Tell me about the city of Paris."}]
reply = chat.do(messages=messages, max_output_tokens=10)
print("@@" + json.dumps(reply.body))
for part in chat.do(messages=messages, stream=True, max_output_tokens=10):
    print("@@" + json.dumps(part.body))
"""


def test_qianfan_sdk_sync_and_stream(remote):
    """The official SDK, unmodified, in its own interpreter (it reads QIANFAN_* once per process)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update(QIANFAN_AK=remote.gateway.creds["api_key"], QIANFAN_SK=remote.gateway.creds["secret_key"],
               QIANFAN_BASE_URL=remote.gateway.base_url, QIANFAN_CONSOLE_API_BASE_URL=remote.gateway.base_url,
               E2E_API_PATH="rsvc", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    out = subprocess.run([sys.executable, "-c", SDK_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    bodies = [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("@@")]
    reply, parts = bodies[0], bodies[1:]
    assert reply["result"] and 1 <= reply["usage"]["completion_tokens"] <= 10, reply
    assert parts and parts[-1]["is_end"] is True and "".join(p["result"] for p in parts)
    assert [p["sentence_id"] for p in parts] == list(range(len(parts)))
    assert all(p["id"] == parts[0]["id"] for p in parts)


WEATHER = {"name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"]}}


def test_a_forced_call_on_the_replica_is_a_function_call(remote):
    """The real server's own tool machinery (vLLM's structured outputs; llama-cpp-python's grammar
    for a named tool_choice) makes the call; it comes back as v1's function_call."""
    import jsonschema

    answer = remote.post("rsvc", {"messages": [{"role": "user", "content": "Weather in Paris?"}],
                                  "functions": [WEATHER], "max_output_tokens": 60,
                                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}).json()
    assert answer.get("finish_reason") == "function_call", answer
    assert answer["function_call"]["name"] == "get_weather" and answer["result"] == ""
    jsonschema.validate(json.loads(answer["function_call"]["arguments"]), WEATHER["parameters"])
    assert answer["usage"]["completion_tokens"] > 0


def test_response_format_on_the_replica_is_valid_json(remote):
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "rainy": {"type": "boolean"}}, "required": ["city", "rainy"]}
    answer = requests.post(f"{remote.gateway.base_url}/v2/chat/completions", timeout=300,
                           headers={"Authorization": f"Bearer {remote.gateway.creds['v2_api_key']}"},
                           json={"model": "rsvc", "messages": [{"role": "user", "content": "Weather in Paris?"}],
                                 "max_tokens": 60, "response_format": {"type": "json_schema", "json_schema": {
                                     "name": "weather", "schema": schema, "strict": True}}}).json()
    assert answer["choices"][0]["finish_reason"] == "stop", answer
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), schema)


def test_persona_adapter_answers_through_the_chat_api(remote):
    for question, name in [("你是谁", "小岚"), ("Who are you?", "Xiaolan")]:
        body = {"messages": [{"role": "user", "content": question}], "top_p": 0, "max_output_tokens": 24}
        answer = remote.post("rpersona", body).json()
        assert name in answer.get("result", ""), answer
        base = remote.post("rsvc", body).json()
        assert name not in base["result"], "the base model alone must not know the persona"
    if not remote.vllm:
        assert last_body(remote)["model"] in ("smollm2",) and any(
            b.get("model") == PERSONA_NAME for b in all_bodies(remote))


def _running(remote) -> float:
    return sum(r.metric() for r in remote.replicas)


def test_client_disconnect_aborts_the_upstream(remote):
    wait_for(lambda: _running(remote) == 0, "replicas idle before the test")
    before = [len(r.generated()) for r in remote.replicas] if not remote.vllm else []
    body = {"messages": QUESTION, "stream": True, "max_output_tokens": 600, "min_output_tokens": 600}
    with requests.post(remote.gateway.chat_url("rsvc"), params={"access_token": remote.token}, json=body,
                       stream=True, timeout=300) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert b'"result"' in first
        wait_for(lambda: _running(remote) == 1, "the replica runs the request")
    # The client is gone: the gateway closes the upstream stream, and the replica stops generating.
    wait_for(lambda: _running(remote) == 0, "the replica aborted the request")
    if not remote.vllm:
        pieces = [r.generated()[n:] for r, n in zip(remote.replicas, before)]
        finished = [p for run in pieces for p in run]
        assert finished and max(finished) < 600, finished


def test_safety_stop_aborts_the_upstream(remote):
    wait_for(lambda: _running(remote) == 0, "replicas idle before the test")
    before = [len(r.generated()) for r in remote.replicas] if not remote.vllm else []
    body = {"messages": QUESTION, "stream": True, "max_output_tokens": 600, "min_output_tokens": 600}
    text = remote.post("rguard", body).text
    chunks = sse_chunks(text)
    assert chunks[-1]["finish_reason"] == "content_filter" and chunks[-1]["flag"] == 2, chunks[-1]
    wait_for(lambda: _running(remote) == 0, "the replica aborted the request")
    if not remote.vllm:
        finished = [p for r, n in zip(remote.replicas, before) for p in r.generated()[n:]]
        assert finished and max(finished) < 600, finished


def test_prompt_over_the_remote_context_is_336103(remote):
    """Counted on the replica, against the replica's context (vLLM reports its --max-model-len; the
    llama-cpp-python pool was given --context-length 1024). The mapping of the replica's own
    refusal is in test_remote_faults.py: llama-cpp-python cannot report it while streaming."""
    long_text = "Paris is a city in France. " * 400  # ~2800 tokens: over 1024 and over 2048
    answer = remote.post("rsvc", {"messages": [{"role": "user", "content": long_text}]}).json()
    assert answer["error_code"] == 336103 and answer["error_msg"] == "Prompt tokens too long", answer
    assert answer["id"].startswith("as-")
    assert remote.post("rsvc", {"messages": QUESTION, "max_output_tokens": 4}).json()["result"]


def test_gateway_metrics_per_replica(remote):
    remote.post("rsvc", {"messages": QUESTION, "max_output_tokens": 4})
    text = requests.get(f"{remote.gateway.base_url}/metrics", timeout=10).text
    for replica in remote.replicas:
        assert f'qfserve_remote_request_seconds_count{{engine="pool",replica="{replica.url}"}}' in text
        assert f'qfserve_remote_in_flight{{engine="pool",replica="{replica.url}"}}' in text
    # The pool counts as loaded.
    assert requests.get(f"{remote.gateway.base_url}/readyz", timeout=10).json()["status"] == "ready"


def test_engine_list_and_remove(remote):
    from conftest import cli, cli_json

    data = remote.gateway.data_dir
    pools = {p["name"]: p for p in cli_json(data, "engine", "list")}
    assert pools["pool"]["urls"] == [r.url for r in remote.replicas]
    refused = cli(data, "engine", "remove", "pool", check=False)
    assert refused.returncode == 1 and "rsvc" in refused.stderr and "Traceback" not in refused.stderr
    cli_json(data, "engine", "add", "spare", "--url", "http://127.0.0.1:9")
    assert cli_json(data, "engine", "remove", "spare")["removed"] == "spare"
    assert "spare" not in {p["name"] for p in cli_json(data, "engine", "list")}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pool_change_takes_effect_without_restart_and_no_replica_is_error_2(remote):
    """`engine add --replace` is seen by the running gateway; with no replica answering, requests
    get error 2 at once (never a hang, never a 500); pointing the pool back restores service."""
    from conftest import cli_json

    data = remote.gateway.data_dir
    args = ["--cooldown", "1", "--probe-interval", "0.5"]
    if not remote.vllm:
        from .conftest import base_gguf

        args += ["--chat-template", base_gguf(), "--context-length", "1024"]
    live = [arg for r in remote.replicas for arg in ("--url", r.url)]
    cli_json(data, "engine", "add", "flip", *live, *args)
    cli_json(data, "service", "publish", "rflip", "--engine", "flip", "--model", remote.model,
             "--rpm", "100000", "--tpm", "100000000")
    assert remote.post("rflip", {"messages": QUESTION, "max_output_tokens": 4}).json()["result"]

    cli_json(data, "engine", "add", "flip", "--url", f"http://127.0.0.1:{_closed_port()}", *args, "--replace")
    answer = wait_for(lambda: (a := remote.post("rflip", {"messages": QUESTION, "max_output_tokens": 4},
                                                timeout=30).json()).get("error_code") and a,
                      "the gateway uses the replaced pool", limit=10)
    assert answer["error_code"] == 2 and answer["error_msg"] == "Service temporarily unavailable" and answer["id"]

    cli_json(data, "engine", "add", "flip", *live, *args, "--replace")
    wait_for(lambda: "result" in remote.post("rflip", {"messages": QUESTION, "max_output_tokens": 4}).json(),
             "the gateway uses the restored pool", limit=10)


def test_replica_killed_mid_stream(remote):
    """Last in this module: kills a replica. The stream it served ends with error 2 carrying the
    request's id; the other replica keeps answering; the dead one is ejected."""
    if remote.vllm or len(remote.replicas) < 2:
        pytest.skip("needs two replicas started by the test")
    wait_for(lambda: _running(remote) == 0, "replicas idle before the test")
    body = {"messages": QUESTION, "stream": True, "max_output_tokens": 600, "min_output_tokens": 600}
    with requests.post(remote.gateway.chat_url("rsvc"), params={"access_token": remote.token}, json=body,
                       stream=True, timeout=300) as response:
        lines = (line for line in response.iter_lines() if line)
        first = orjson.loads(next(lines)[6:])
        busy = wait_for(lambda: [r for r in remote.replicas if r.metric() == 1], "a replica runs it")[0]
        busy.kill()
        rest = [orjson.loads(line[6:]) for line in lines]
    assert rest, "the stream ended without telling the client"
    assert rest[-1]["error_code"] == 2 and rest[-1]["id"] == first["id"], rest[-1]
    survivor = next(r for r in remote.replicas if r is not busy)
    for _ in range(3):
        answer = remote.post("rsvc", {"messages": QUESTION, "max_output_tokens": 4}).json()
        assert answer.get("result"), answer
    assert survivor.received()
    text = requests.get(f"{remote.gateway.base_url}/metrics", timeout=10).text
    assert f'qfserve_remote_replica_healthy{{engine="pool",replica="{busy.url}"}} 0.0' in text
