"""v2 function calling and structured output on the wire, without a server: `tools`, `tool_choice`,
`tool_calls` / `tool` turns and `response_format` parsed onto the neutral pieces v1 uses, and a
neutral FunctionCall rendered as OpenAI's `tool_calls` (sync and streamed). Over HTTP with the real
model and real clients: tests/e2e/test_v2_functions.py."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from qfserve.protocol import v2
from qfserve.protocol.errors import QianfanError
from qfserve.protocol.events import ChatEnd, FunctionCall, TextDelta, Usage
from qfserve.protocol.functions import ResponseFormat, ToolCall, ToolChoice
from qfserve.protocol.v2_errors import V2Error, twin_of

HI = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}
ASKED = {"role": "user", "content": "Weather in Paris?"}


def parse(**body):
    return v2.parse_chat_request({"model": "svc", "messages": HI, **body}).chat


def error_of(**body) -> V2Error:
    with pytest.raises((V2Error, QianfanError)) as caught:
        v2.parse_chat_request({"model": "svc", "messages": HI, **body})
    error = caught.value
    return twin_of(error) if isinstance(error, QianfanError) else error


def test_tools_and_tool_choice_map_onto_the_neutral_pieces():
    chat = parse(tools=[WEATHER, {"type": "function", "function": {"name": "noop"}}], tool_choice="required")
    assert [f.name for f in chat.functions] == ["get_weather", "noop"]
    assert chat.functions[0].parameters == WEATHER["function"]["parameters"]
    assert chat.functions[1].parameters == {"type": "object", "properties": {}} and chat.functions[1].description == ""
    assert chat.tool_choice == ToolChoice(mode="required")
    named = parse(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.tool_choice == ToolChoice(mode="function", name="get_weather")
    assert parse(tools=[WEATHER], tool_choice="none").tool_choice.mode == "none"
    assert parse(tools=[WEATHER]).tool_choice is None  # auto


def test_response_formats():
    assert parse(response_format={"type": "text"}).response_format is None
    assert parse(response_format={"type": "json_object"}).response_format == ResponseFormat(type="json_object")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = parse(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema,
                                                                          "strict": True}}).response_format
    assert fmt == ResponseFormat(type="json_schema", json_schema=schema, strict=True)


def test_a_replayed_conversation_with_tool_calls_and_results():
    chat = parse(messages=[{"role": "system", "content": "be brief"}, ASKED, CALLED, ANSWER], tools=[WEATHER])
    assert chat.system == "be brief"
    user, assistant, result = chat.messages
    assert assistant.role == "assistant" and assistant.content == ""
    assert assistant.tool_calls == (ToolCall(name="get_weather", arguments='{"city": "Paris"}', id="call_1"),)
    assert (result.role, result.name, result.tool_call_id, result.content) == \
        ("function", "get_weather", "call_1", '{"sky": "sunny"}')
    assert result.as_engine_dict() == {"role": "function", "content": '{"sky": "sunny"}', "name": "get_weather",
                                       "tool_call_id": "call_1"}
    assert assistant.as_engine_dict()["tool_calls"][0]["id"] == "call_1"
    # Two calls in one turn, answered in any order, then the conversation goes on.
    two = {**CALLED, "tool_calls": [*CALLED["tool_calls"], {"id": "call_2", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Rome"}}}]}
    chat = parse(messages=[ASKED, two, {**ANSWER, "tool_call_id": "call_2"}, ANSWER,
                           {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "thanks"}])
    assert [m.role for m in chat.messages] == ["user", "assistant", "function", "function", "assistant", "user"]
    assert chat.messages[1].tool_calls[1].arguments == '{"city":"Rome"}'


@pytest.mark.parametrize("body, code, words", [
    ({"tools": {"type": "function"}}, "invalid_argument", ["`tools` must be an array"]),
    ({"tools": [{"type": "retrieval"}]}, "invalid_argument", ["`tools[0].type`", '"function"']),
    ({"tools": [{"type": "function"}]}, "invalid_argument", ["`tools[0].function` is required"]),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "invalid_argument",
     ["`tools[0].function.name`", "64"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "invalid_argument", ["`tools[0].function.parameters`", "object"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": 1}}}}}]}, "invalid_argument",
     ["`tools[0].function.parameters` is not a valid JSON schema"]),
    ({"tools": [WEATHER, WEATHER]}, "invalid_argument", ["'get_weather' appears twice"]),
    ({"tools": [WEATHER], "tool_choice": "always"}, "invalid_argument", ["`tool_choice` must be", "'always'"]),
    ({"tool_choice": "required"}, "invalid_argument", ["needs `tools`"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "invalid_argument",
     ["'nope'", "not one of `tools`"]),
    ({"response_format": {"type": "xml"}}, "invalid_argument", ["`response_format.type`", "'xml'"]),
    ({"response_format": {"type": "json_schema"}}, "invalid_argument", ["`response_format.json_schema` is required"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "invalid_argument",
     ["`response_format.json_schema.schema` is required"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
     "invalid_argument", ["`response_format.json_schema.name`"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"},
                                                                  "strict": "yes"}}},
     "invalid_argument", ["strict"]),
    ({"parallel_tool_calls": "yes"}, "invalid_argument", ["parallel_tool_calls"]),
    ({"messages": [ASKED, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]}, "invalid_messages",
     ["messages[1]", "must follow an assistant message with tool_calls"]),
    ({"messages": [ASKED, CALLED, {"role": "tool", "content": "x"}]}, "invalid_messages",
     ["messages[2].tool_call_id is required"]),
    ({"messages": [ASKED, CALLED, {**ANSWER, "tool_call_id": "call_9"}]}, "invalid_messages",
     ["'call_9'", "messages[1]"]),
    ({"messages": [ASKED, CALLED, {"role": "user", "content": "and?"}]}, "invalid_messages",
     ["messages[2]", "unanswered: call_1"]),
    ({"messages": [ASKED, CALLED]}, "invalid_messages", ["unanswered: call_1"]),
    ({"messages": [ASKED, {**CALLED, "tool_calls": [{"type": "function", "function": {"name": "f"}}]}, ANSWER]},
     "invalid_messages", ["messages[1].tool_calls[0].id is required"]),
    ({"messages": [ASKED, {**CALLED, "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": 3}}]}]}, "invalid_messages", ["arguments must be a string of JSON"]),
    ({"messages": [ASKED, CALLED, ANSWER, {"role": "tool", "tool_call_id": "call_1", "content": "again"}]},
     "invalid_messages", ["messages[3].tool_call_id 'call_1'"]),
])
def test_bad_bodies_get_openai_shaped_errors_naming_the_field(body, code, words):
    error = error_of(**body)
    assert (error.status, error.type, error.code) == (400, "invalid_request_error", code), error
    for word in words:
        assert word in error.message, error.message


def collect(agen):
    async def run():
        return [item async for item in agen]
    return asyncio.run(run())


def events(*items):
    async def gen():
        for item in items:
            yield item
    return gen()


CALL = FunctionCall("get_weather", '{"city": "Paris"}', "", Usage(5, 7), id="call_abc")
END = ChatEnd("function_call", Usage(5, 7))


def test_a_call_renders_as_tool_calls_with_finish_reason_tool_calls():
    answer = asyncio.run(v2.render_completion("as-1", "svc", 1, events(CALL, END)))
    data = orjson.loads(v2.dump(answer))
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    # A text answer keeps its content and has no tool_calls key.
    text = orjson.loads(v2.dump(asyncio.run(v2.render_completion(
        "as-1", "svc", 1, events(TextDelta("hi", Usage(5, 1)), ChatEnd("normal", Usage(5, 1)))))))
    assert text["choices"][0]["message"] == {"role": "assistant", "content": "hi"}


def test_a_streamed_call_is_one_delta_in_openai_shape():
    chunks = [orjson.loads(v2.dump(c)) for c in collect(v2.render_stream("as-1", "svc", 1, events(CALL, END),
                                                                         include_usage=True))]
    first, last, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "tool_calls": [{
        "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "index": 0}]}
    assert last["choices"][0]["finish_reason"] == "tool_calls" and last["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 7

