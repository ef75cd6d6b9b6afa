"""v2 function calling and structured output through the real server and the real (135M) model, with
unmodified clients: the `openai` SDK (`tools` forced, required and auto; `response_format` json_schema
strict and json_object; a replayed conversation with tool_calls and tool turns; streaming) and
LangChain's `ChatOpenAI(...).bind_tools`. Calls and JSON answers are decoded under a grammar, so
every `arguments` and every JSON `content` parses and validates (checked with `jsonschema`).

The module has its own server, with a lexicon for the moderation of arguments.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema
import openai
import pytest
import requests
from conftest import cli_json, start_server, stop_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
FLIGHT = {"type": "function", "function": {
    "name": "book_flight", "description": "Book a flight between two cities",
    "parameters": {"type": "object", "properties": {
        "origin": {"type": "string"}, "destination": {"type": "string"},
        "passengers": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["origin", "destination", "passengers"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, FLIGHT)}
QUESTION = [{"role": "user", "content": "What's the weather like in Paris today?"}]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
    "required": ["name", "age", "city"], "additionalProperties": False}
DENIED, CAUTION = "zorblax", "quibbleflux"


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("qfserve-v2-functions")
    lexicon = data_dir / "deny.tsv"
    lexicon.write_text(f"{DENIED}\tdemo\t2\n{CAUTION}\tdemo\t1\n")
    creds = cli_json(data_dir, "app", "create", "fn")
    cli_json(data_dir, "service", "publish", "fnsvc", "--model", "default", "--profile", "ERNIE-Speed-8K",
             "--rpm", "100000", "--tpm", "100000000")
    server = start_server(data_dir, "--safety-lexicon", str(lexicon))
    server.creds = creds
    yield SimpleNamespace(server=server, url=server.base_url + "/v2", key=creds["v2_api_key"])
    stop_server(server)


def client(v2) -> openai.OpenAI:
    return openai.OpenAI(base_url=v2.url, api_key=v2.key, max_retries=0, timeout=300)


def forced(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def valid_call(call, name: str | None = None) -> dict:
    assert call.type == "function" and call.id.startswith("call_"), call
    if name is not None:
        assert call.function.name == name
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


@pytest.mark.parametrize("name, prompt", [
    ("get_weather", "Is it cold in Oslo today?"),
    ("book_flight", "Two tickets from Berlin to Madrid"),
])
def test_forced_tool_calls_parse_and_validate(v2, name, prompt):
    answer = client(v2).chat.completions.create(
        model="fnsvc", messages=[{"role": "user", "content": prompt}], tools=[WEATHER, FLIGHT],
        tool_choice=forced(name), max_tokens=200)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", answer
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    valid_call(choice.message.tool_calls[0], name)
    assert answer.usage.completion_tokens > 0 and answer.usage.total_tokens == \
        answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_required_calls_one_of_the_tools_and_auto_answers_weather_with_a_call(v2):
    required = client(v2).chat.completions.create(
        model="fnsvc", messages=[{"role": "user", "content": "Fly me from Rome to Paris"}], tools=[WEATHER, FLIGHT],
        tool_choice="required", max_tokens=200)
    assert required.choices[0].finish_reason == "tool_calls"
    valid_call(required.choices[0].message.tool_calls[0])
    auto = client(v2).chat.completions.create(model="fnsvc", messages=QUESTION, tools=[WEATHER], max_tokens=200)
    assert auto.choices[0].finish_reason == "tool_calls", auto
    valid_call(auto.choices[0].message.tool_calls[0], "get_weather")
    # "none": the tools are not offered, the answer is text.
    none = client(v2).chat.completions.create(model="fnsvc", messages=QUESTION, tools=[WEATHER], tool_choice="none",
                                              max_tokens=8)
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content


def test_response_format_json_schema_strict_and_json_object(v2):
    for prompt in ("Describe a person who lives in Rome.", "你好"):
        answer = client(v2).chat.completions.create(
            model="fnsvc", messages=[{"role": "user", "content": prompt}], max_tokens=120,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                    "strict": True}})
        assert answer.choices[0].finish_reason == "stop", answer
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    anything = client(v2).chat.completions.create(
        model="fnsvc", messages=[{"role": "user", "content": "Give me a JSON object about cats."}], max_tokens=120,
        response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":  # an open object may run past max_tokens; its start is still JSON
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    assert anything.choices[0].message.content.startswith("{")


def test_a_replayed_conversation_with_tool_calls_and_tool_turns_is_answered(v2):
    first = client(v2).chat.completions.create(model="fnsvc", messages=QUESTION, tools=[WEATHER],
                                               tool_choice=forced("get_weather"), max_tokens=200)
    message = first.choices[0].message
    history = [*QUESTION, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": '{"temperature": 21}'}]
    answer = client(v2).chat.completions.create(model="fnsvc", messages=history, tools=[WEATHER], max_tokens=30)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_streamed_call_arrives_in_one_delta(v2):
    stream = client(v2).chat.completions.create(model="fnsvc", messages=QUESTION, tools=[WEATHER],
                                                tool_choice=forced("get_weather"), max_tokens=200, stream=True,
                                                stream_options={"include_usage": True})
    chunks = list(stream)
    calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(calls) == 1 and len(calls[0].choices[0].delta.tool_calls) == 1
    delta_call = calls[0].choices[0].delta.tool_calls[0]
    assert delta_call.index == 0
    valid_call(delta_call, "get_weather")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("extra, code, words", [
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "invalid_argument",
     ["`tools[0].function.name`"]),
    ({"tools": [WEATHER], "tool_choice": forced("nope")}, "invalid_argument", ["'nope'"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "invalid_argument",
     ["`response_format.json_schema.schema`"]),
    ({"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_1", "content": "21"}]}, "invalid_messages",
     ["messages[1]", "tool_calls"]),
    # Valid schemas the grammar cannot enforce are refused rather than left unenforced.
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 18}}}}}]}, "invalid_argument",
     ["functions parameters is not supported"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 18}}}}}}, "invalid_argument",
     ["response_format json_schema is not supported"]),
])
def test_bad_bodies_get_openai_errors(v2, extra, code, words):
    response = requests.post(f"{v2.url}/chat/completions", headers={"Authorization": f"Bearer {v2.key}"},
                             json={"model": "fnsvc", "messages": QUESTION, **extra}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "invalid_request_error"), error
    for word in words:
        assert word in error["message"], error


def test_call_arguments_are_moderated_on_v2(v2):
    def call_with(word: str):
        say = {"type": "function", "function": {"name": "say", "description": "Say a fixed word", "parameters": {
            "type": "object", "properties": {"word": {"const": word}}, "required": ["word"]}}}
        body = {"model": "fnsvc", "messages": [{"role": "user", "content": "go"}], "tools": [say],
                "tool_choice": forced("say")}
        return requests.post(f"{v2.url}/chat/completions", headers={"Authorization": f"Bearer {v2.key}"},
                             json=body, timeout=300).json()["choices"][0]

    withheld = call_with(DENIED)
    assert withheld["finish_reason"] == "content_filter" and "tool_calls" not in withheld["message"], withheld
    assert withheld["flag"] >= 2
    flagged = call_with(CAUTION)
    assert flagged["finish_reason"] == "tool_calls" and flagged["flag"] == 1
    assert json.loads(flagged["message"]["tool_calls"][0]["function"]["arguments"]) == {"word": CAUTION}


def test_langchain_chat_openai_bind_tools(v2):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """Get the current weather for a city"""

        city: str = Field(description="the city name")

    llm = ChatOpenAI(model="fnsvc", base_url=v2.url, api_key=v2.key, max_tokens=200, max_retries=0, timeout=300)
    bound = llm.bind_tools([GetWeather], tool_choice="GetWeather")
    message = bound.invoke(QUESTION[0]["content"])
    assert len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call["name"] == "GetWeather" and isinstance(call["args"].get("city"), str) and call["id"].startswith("call_")
    history = [HumanMessage(QUESTION[0]["content"]), message,
               ToolMessage(content='{"temperature": 21}', tool_call_id=call["id"])]
    answer = llm.bind_tools([GetWeather]).invoke(history)
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
