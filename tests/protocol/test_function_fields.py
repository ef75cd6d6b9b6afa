"""v1 function calling fields: parsing into the neutral request, and each malformed body's code and message."""

import pytest

from qfserve.protocol.chat import parse_chat_request
from qfserve.protocol.errors import Code, QianfanError

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ONE = [{"role": "user", "content": "Weather in Paris?"}]


def error_of(body) -> QianfanError:
    with pytest.raises(QianfanError) as caught:
        parse_chat_request(body)
    return caught.value


def test_functions_and_tool_choice_are_parsed():
    request = parse_chat_request({
        "messages": ONE,
        "functions": [{**WEATHER, "responses": {"type": "object"},
                       "examples": [[{"role": "user", "content": "Rome?"},
                                     {"role": "assistant", "content": None,
                                      "function_call": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]]}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    })
    assert [f.name for f in request.functions] == ["get_weather"]
    assert request.functions[0].parameters == WEATHER["parameters"]
    assert len(request.functions[0].examples) == 1
    assert (request.tool_choice.mode, request.tool_choice.name) == ("function", "get_weather")


def test_no_functions_means_none():
    for value in (None, []):
        request = parse_chat_request({"messages": ONE, "functions": value})
        assert request.functions == () and request.tool_choice is None


def test_a_replayed_call_and_its_result_are_accepted():
    """LangChain replays a call with `content: null`; the SDK with `content: ""`."""
    for empty in (None, ""):
        request = parse_chat_request({"messages": [
            *ONE,
            {"role": "assistant", "content": empty,
             "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}', "thoughts": "look it up"}},
            {"role": "function", "name": "get_weather", "content": '{"temperature": 21}'},
        ], "functions": [WEATHER]})
        call_turn, result_turn = request.messages[1], request.messages[2]
        assert call_turn.content == "" and call_turn.tool_calls[0].name == "get_weather"
        assert call_turn.tool_calls[0].arguments == '{"city": "Paris"}'
        assert call_turn.tool_calls[0].thoughts == "look it up"
        assert result_turn.name == "get_weather"
        assert call_turn.as_engine_dict()["tool_calls"][0]["name"] == "get_weather"
        assert result_turn.as_engine_dict() == {"role": "function", "content": '{"temperature": 21}',
                                                "name": "get_weather"}


def test_input_chars_count_replayed_arguments():
    request = parse_chat_request({"messages": [
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "cd"},
    ]})
    assert request.input_chars() == 2 + 2 + 2


def test_empty_content_without_a_call_is_still_refused():
    error = error_of({"messages": [*ONE, {"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]})
    assert (error.code, error.message) == (Code.PARAM_OUT_OF_RANGE, "message content can not be empty")


def _with_function(**changes):
    function = {**WEATHER, **changes}
    return {"messages": ONE, "functions": [{k: v for k, v in function.items() if v is not ...}]}


@pytest.mark.parametrize(
    "body, code, message",
    [
        ({"messages": ONE, "functions": {"name": "x"}}, Code.INVALID_ARGUMENT, "Invalid Argument"),
        ({"messages": ONE, "functions": ["get_weather"]}, Code.INVALID_ARGUMENT, "Invalid Argument"),
        (_with_function(name=...), Code.PARAM_OUT_OF_RANGE, "functions name can't be blank"),
        (_with_function(name=" "), Code.PARAM_OUT_OF_RANGE, "functions name can't be blank"),
        (_with_function(name=3), Code.INVALID_ARGUMENT, "Invalid Argument"),
        (_with_function(description=...), Code.PARAM_OUT_OF_RANGE, "functions description can't be blank"),
        (_with_function(description=""), Code.PARAM_OUT_OF_RANGE, "functions description can't be blank"),
        (_with_function(parameters=...), Code.PARAM_OUT_OF_RANGE, "functions parameters can't be blank"),
        (_with_function(parameters="{}"), Code.INVALID_ARGUMENT, "Invalid Argument"),
        (_with_function(parameters={"type": "string"}), Code.PARAM_OUT_OF_RANGE,
         "functions parameters type must be object"),
        (_with_function(parameters={"type": "object", "properties": {"a": {"type": "nonsense"}}}),
         Code.PARAM_OUT_OF_RANGE, "functions parameters is not a valid json schema"),
        (_with_function(responses="none"), Code.INVALID_ARGUMENT, "Invalid Argument"),
        (_with_function(examples=[{"role": "user"}]), Code.INVALID_ARGUMENT, "Invalid Argument"),
        ({"messages": ONE, "functions": [WEATHER, WEATHER]}, Code.PARAM_OUT_OF_RANGE, "functions name must be unique"),
        ({"messages": ONE, "functions": [WEATHER], "tool_choice": "get_weather"}, Code.INVALID_ARGUMENT,
         "Invalid Argument"),
        ({"messages": ONE, "functions": [WEATHER], "tool_choice": {"type": "tool", "function": {"name": "get_weather"}}},
         Code.PARAM_OUT_OF_RANGE, "tool_choice type must be function"),
        ({"messages": ONE, "functions": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         Code.PARAM_OUT_OF_RANGE, "tool_choice function name must be one of functions"),
        ({"messages": ONE, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         Code.PARAM_OUT_OF_RANGE, "tool_choice requires functions"),
        ({"messages": [*ONE, {"role": "assistant", "content": "", "function_call": "get_weather"},
                       {"role": "function", "name": "get_weather", "content": "{}"}]},
         Code.INVALID_ARGUMENT, "Invalid Argument"),
        ({"messages": [*ONE, {"role": "assistant", "content": "", "function_call": {"arguments": "{}"}},
                       {"role": "function", "name": "get_weather", "content": "{}"}]},
         Code.PARAM_OUT_OF_RANGE, "function_call's name can't be blank"),
        ({"messages": [*ONE, {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": {}}},
                       {"role": "function", "name": "f", "content": "{}"}]},
         Code.INVALID_ARGUMENT, "Invalid Argument"),
        ({"messages": [*ONE, {"role": "assistant", "content": "", "function_call": {"name": "f"}},
                       {"role": "function", "content": "{}"}]},
         Code.PARAM_OUT_OF_RANGE, "the name of function message can't be blank"),
        ({"messages": [*ONE, {"role": "assistant", "content": "", "function_call": {"name": "f"}},
                       {"role": "function", "name": "f", "content": ""}]},
         Code.PARAM_OUT_OF_RANGE, "message content can not be empty"),
    ],
)
def test_bad_function_bodies(body, code, message):
    error = error_of(body)
    assert (error.code, error.message) == (code, message)
