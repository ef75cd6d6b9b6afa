"""Function calling and structured output on a remote engine: the real gateway passes `tools`,
`tool_choice` and `response_format` through to a replica's `/v1/chat/completions`, and maps its
streamed `tool_calls` back, so v1's `function_call` and v2's `tool_calls` come out as on the embedded
engine. The replica is a small vLLM-shaped fake (tool_replica.py): what it sends back is scripted,
what the gateway sent it is checked.
"""

from __future__ import annotations

import json

import orjson
import pytest
import requests
from conftest import cli_json, start_server, stop_server

from .tool_replica import ARGUMENTS, JSON_ANSWER, USAGE, ToolReplica

WEATHER = {"name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote-tools")
    with ToolReplica() as replica:
        creds = cli_json(tmp, "app", "create", "a")
        cli_json(tmp, "engine", "add", "vl", "--url", replica.url, "--base", "default")
        cli_json(tmp, "service", "publish", "rtools", "--engine", "vl", "--model", "tooly", "--rpm", "100000",
                 "--tpm", "100000000")
        server = start_server(tmp)
        server.creds = creds
        server.extra = {"replica": replica, "token": server.token()}
        yield server
        stop_server(server)


def v1(gateway, body):
    return requests.post(gateway.chat_url("rtools"), params={"access_token": gateway.extra["token"]}, json=body,
                         timeout=60)


def v2(gateway, body):
    return requests.post(f"{gateway.base_url}/v2/chat/completions",
                         headers={"Authorization": f"Bearer {gateway.creds['v2_api_key']}"},
                         json={"model": "rtools", **body}, timeout=60)


def sent(gateway, path: str) -> dict:
    bodies = requests.get(f"{gateway.extra['replica'].url}/debug/requests", timeout=10).json()
    return [b for b in bodies if b["path"] == path][-1]


def test_v1_functions_pass_through_and_the_call_comes_back_as_function_call(gateway):
    answer = v1(gateway, {"messages": QUESTION, "functions": [WEATHER],
                          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}).json()
    assert answer["finish_reason"] == "function_call" and answer["result"] == "", answer
    assert answer["function_call"] == {"name": "get_weather", "arguments": ARGUMENTS, "thoughts": ""}
    assert answer["usage"]["completion_tokens"] == USAGE["completion_tokens"]
    body = sent(gateway, "/v1/chat/completions")
    assert body["tools"] == [{"type": "function", "function": WEATHER}]
    # vLLM does not constrain a named tool_choice's arguments (make test-vllm): the call is asked as
    # a JSON answer of the function's parameters, which its structured outputs do enforce.
    assert body["tool_choice"] == "none"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "get_weather", "schema": WEATHER["parameters"], "strict": True}}
    assert body["messages"] == QUESTION and body["model"] == "tooly" and body["stream"] is True
    assert "prompt" not in body and "stop" not in body  # no stop string may cut a forced call
    counted = sent(gateway, "/tokenize")
    assert counted["tools"] == body["tools"]  # counted with the tools the template renders
    assert answer["usage"]["prompt_tokens"] == len(QUESTION) + 1


def test_v2_tools_come_back_as_tool_calls_sync_and_streamed(gateway):
    tools = [{"type": "function", "function": WEATHER}]
    answer = v2(gateway, {"messages": QUESTION, "tools": tools, "tool_choice": "required"}).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls", answer
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    assert sent(gateway, "/v1/chat/completions")["tool_choice"] == "required"

    stream = v2(gateway, {"messages": QUESTION, "tools": tools, "stream": True})
    chunks = [orjson.loads(line[6:]) for line in stream.text.split("\n") if line.startswith("data: {")]
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"] and
             "tool_calls" in c["choices"][0]["delta"]]
    assert len(calls) == 1 and calls[0][0]["function"]["arguments"] == ARGUMENTS  # gathered, then one delta
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert sent(gateway, "/v1/chat/completions")["tool_choice"] == "auto"
    # tool_choice "none": nothing is offered, the plain path answers.
    plain = v2(gateway, {"messages": QUESTION, "tools": tools, "tool_choice": "none"}).json()
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": "Hi."}


def test_response_format_passes_through(gateway):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    answer = v2(gateway, {"messages": QUESTION, "response_format": {
        "type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}}).json()
    assert answer["choices"][0]["message"]["content"] == JSON_ANSWER, answer
    body = sent(gateway, "/v1/chat/completions")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == schema and "tools" not in body


def test_replayed_calls_reach_the_replica_with_ids(gateway):
    """v1 turns carry no ids: the remote engine gives each call one and answers it by name; v2 ids are kept."""
    history = [*QUESTION, {"role": "assistant", "content": "", "function_call": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": '{"sky": "sunny"}'}]
    answer = v1(gateway, {"messages": history, "functions": [WEATHER]}).json()
    assert answer["finish_reason"] == "function_call", answer  # the fake calls whenever tools are offered
    turns = sent(gateway, "/v1/chat/completions")["messages"]
    call_id = turns[1]["tool_calls"][0]["id"]
    assert turns[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert turns[2] == {"role": "tool", "tool_call_id": call_id, "content": '{"sky": "sunny"}'}

    v2_history = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_given", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_given", "content": "21"}]
    text = v2(gateway, {"messages": v2_history}).json()
    assert text["choices"][0]["message"]["content"] == "Hi.", text  # no tools offered: the plain path
    turns = sent(gateway, "/tokenize")["messages"]
    assert turns[1]["tool_calls"][0]["id"] == "call_given" and turns[2]["tool_call_id"] == "call_given"
    assert json.loads(turns[1]["tool_calls"][0]["function"]["arguments"]) == {}
