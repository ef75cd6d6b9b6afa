"""The documented tool format (prompt, call schema, reading calls back) and its grammar."""

import json

import jsonschema
import pytest

from qfserve.engine import tool_prompt
from qfserve.engine.base import FunctionDef, Tools
from qfserve.engine.llamacpp import calls
from qfserve.engine.llamacpp.grammar import gbnf

WEATHER = FunctionDef("get_weather", "Get the current weather for a city.", json.dumps({
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "array", "items": {"type": "integer"}}},
    "required": ["city", "unit"],
}))
TIME = FunctionDef("get_time", "Get the time in a timezone", json.dumps({
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}))


def test_system_block_lists_every_function_after_the_callers_system():
    text = tool_prompt.system_prompt("Be brief.", Tools((WEATHER, TIME)))
    assert text.startswith("Be brief.\n\n") and tool_prompt.CALL_MARKER in text
    lines = text.splitlines()[-2:]
    assert [json.loads(line)["name"] for line in lines] == ["get_weather", "get_time"]


def test_synthetic_example_shows_a_valid_call_of_the_forced_function():
    turns = tool_prompt.example_turns(Tools((WEATHER, TIME), "function", "get_time"))
    assert turns[0] == {"role": "user", "content": "Get the time in a timezone."}
    call = tool_prompt.parse_call(turns[1]["content"], Tools((WEATHER, TIME)))
    assert call.name == "get_time" and json.loads(call.arguments) == {"tz": "..."}
    weather = tool_prompt.parse_call(tool_prompt.example_turns(Tools((WEATHER,)))[1]["content"], Tools((WEATHER,)))
    assert json.loads(weather.arguments) == {"city": "...", "unit": "celsius"}


def test_callers_examples_replace_the_synthetic_one():
    given = FunctionDef(WEATHER.name, WEATHER.description, WEATHER.parameters, (
        [{"role": "user", "content": "Rome?"},
         {"role": "assistant", "content": "", "function_call": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}],
    ))
    turns = tool_prompt.example_turns(Tools((given,)))
    assert turns[0]["content"] == "Rome?"
    assert turns[1]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}'


def test_history_calls_and_results_become_plain_turns():
    turns = tool_prompt.render_messages([
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"name": "get_weather", "arguments": '{"city": "Paris"}', "thoughts": "checking"}]},
        {"role": "function", "name": "get_weather", "content": '{"t": 21}'},
    ])
    assert turns[1] == {"role": "assistant",
                        "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'}
    assert turns[2]["role"] == "user"
    assert turns[2]["content"] == '<tool_response>{"name": "get_weather", "content": "{\\"t\\": 21}"}</tool_response>'


def test_parse_call_accepts_only_whole_valid_calls():
    tools = Tools((WEATHER,))
    good = '<tool_call>{"name": "get_weather", "arguments": {"city": "北京", "unit": "celsius"}} '
    call = tool_prompt.parse_call(good, tools)
    assert call.name == "get_weather" and call.arguments == '{"city": "北京", "unit": "celsius"}'
    for bad in (
        'The weather is fine.',
        ' <tool_call>{"name": "get_weather", "arguments": {"city": "x", "unit": "celsius"}}',  # not at the start
        '<tool_call>{"name": "get_weather", "arguments": {"city": "x", "un',  # cut short
        '<tool_call>{"name": "get_weather", "arguments": {"city": "x"}}',  # misses a required field
        '<tool_call>{"name": "other", "arguments": {}}',
    ):
        assert tool_prompt.parse_call(bad, tools) is None, bad
    forced = Tools((WEATHER, TIME), "function", "get_time")
    assert tool_prompt.parse_call('<tool_call>{"name": "get_weather", "arguments": {"city": "x", "unit": "celsius"}}',
                                  forced) is None


def test_bounded_caps_open_strings_and_arrays_only():
    schema = tool_prompt.bounded(json.loads(WEATHER.parameters))
    assert schema["properties"]["city"]["maxLength"] == tool_prompt.STRING_CAP
    assert "maxLength" not in schema["properties"]["unit"]  # an enum is bounded already
    assert schema["properties"]["days"]["maxItems"] == tool_prompt.ARRAY_CAP
    assert "maxLength" not in json.loads(WEATHER.parameters)["properties"]["city"]  # the original is untouched


EVENT = {"type": "object", "properties": {
    "title": {"type": "string"}, "date": {"type": "string", "format": "date"},
    "attendees": {"type": "array", "minItems": 1, "items": {
        "type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string", "maxLength": 200}},
        "required": ["name"]}}}, "required": ["title", "attendees"]}


def test_caps_shrink_until_nested_arrays_fit_the_budget():
    # Fixed caps would allow 10 attendees of 160 + 200 characters: thousands of tokens.
    uncapped_by_budget = tool_prompt._capped(EVENT, tool_prompt.STRING_CAP, tool_prompt.ARRAY_CAP)
    assert tool_prompt.longest(uncapped_by_budget) > 3000
    schema = tool_prompt.bounded(EVENT)
    attendees = schema["properties"]["attendees"]
    assert tool_prompt.longest(schema) <= tool_prompt.VALUE_BUDGET
    assert 1 <= attendees["maxItems"] < tool_prompt.ARRAY_CAP
    assert tool_prompt.STRING_FLOOR <= schema["properties"]["title"]["maxLength"] < tool_prompt.STRING_CAP
    assert attendees["items"]["properties"]["email"]["maxLength"] == 200  # the schema's own size stays
    assert json.loads(tool_prompt.bounded_text(json.dumps(EVENT))) == schema  # the cached form, per request


def test_caps_stop_at_their_floors_and_respect_minimums():
    # Even at the floors this one is over the budget: the minimums win, the caps stop shrinking.
    huge = {"type": "array", "minItems": 3, "items": {"type": "array", "items": {"type": "string", "minLength": 300}}}
    schema = tool_prompt.bounded(huge)
    assert tool_prompt.longest(schema) > tool_prompt.VALUE_BUDGET
    assert schema["maxItems"] == 3 and schema["items"]["maxItems"] == tool_prompt.ARRAY_FLOOR
    assert schema["items"]["items"]["maxLength"] == 300
    jsonschema.validate([["x" * 300] * 2] * 3, schema)


def test_call_schema_is_one_function_or_any_offered():
    one = tool_prompt.call_schema(Tools((WEATHER, TIME), "function", "get_time"))
    assert one["properties"]["name"] == {"const": "get_time"}
    both = tool_prompt.call_schema(Tools((WEATHER, TIME)))
    assert [alt["properties"]["name"]["const"] for alt in both["anyOf"]] == ["get_weather", "get_time"]
    jsonschema.validate({"name": "get_time", "arguments": {"tz": "UTC"}}, both)


def test_grammar_starts_with_the_marker_and_forbids_raw_control_characters():
    constraint = calls.tools_constraint(Tools((WEATHER,), "function", "get_weather"), 0.1)
    assert constraint.prefix == "<tool_call>" and constraint.lazy is False
    assert 'root ::= "<tool_call>" qfserve-answer' in constraint.grammar
    char_rule = next(line for line in constraint.grammar.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char_rule
    assert calls.tools_constraint(Tools((WEATHER,)), 0.1).lazy is True


def test_unconvertible_schema_is_a_value_error():
    with pytest.raises(ValueError):
        gbnf(json.dumps({"type": "object", "properties": {"a": {"$ref": "https://example.com/schema"}}}))


@pytest.mark.parametrize("schema, rule", [
    ({"type": "integer", "minimum": 1, "maximum": 3}, '("1" | "2" | "3") space'),
    ({"type": "integer", "exclusiveMinimum": -2, "exclusiveMaximum": 1}, '("-1" | "0") space'),
    ({"type": "integer", "minimum": 0}, '("0" | [1-9]'),
    ({"type": "integer", "minimum": 1}, "[1-9] [0-9]?"),
    ({"type": "number", "minimum": 0}, '("0" | [1-9]'),
])
def test_numeric_bounds_are_written_into_the_grammar(schema, rule):
    lines = gbnf(json.dumps(schema)).splitlines()
    answer = next(line for line in lines if line.startswith("qfserve-answer ::= "))
    assert answer.startswith("qfserve-answer ::= " + rule), answer


@pytest.mark.parametrize("schema", [
    {"type": "integer", "minimum": 5},
    {"type": "integer", "minimum": 0, "maximum": 10**6},
    {"type": "number", "maximum": 3.5},
    {"type": "integer", "minimum": 3, "maximum": 2},
])
def test_bounds_the_grammar_cannot_enforce_are_refused(schema):
    with pytest.raises(ValueError):
        gbnf(json.dumps(schema))


def test_a_list_of_types_keeps_its_other_keywords():
    grammar = gbnf(json.dumps({"type": ["string", "null"], "maxLength": 2}))
    assert '(char (char)?)?' in grammar and 'null ::= "null"' in grammar


def test_llama_cpp_is_the_judge_of_a_converted_grammar():
    """The converter writes some regex escapes llama.cpp's parser refuses: refused, not served."""
    from qfserve.engine.llamacpp.grammar import check_grammar
    from qfserve.engine.prompt import ChatPrompt, default_model_path

    vocab = ChatPrompt(default_model_path()).vocab
    check_grammar(vocab, calls.tools_constraint(Tools((WEATHER,)), 0.1).grammar)
    escaped = {"type": "object", "properties": {"e": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"}}}
    with pytest.raises(ValueError):
        check_grammar(vocab, gbnf(json.dumps(escaped)))
