"""Function calling through the real server and the real (135M) model: calls are decoded under a
grammar, so every returned `arguments` parses and validates against its schema."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import orjson
import pytest
import requests
from conftest import cli_json, start_server, stop_server

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]},
}
FLIGHT = {
    "name": "book_flight",
    "description": "Book a flight between two cities",
    "parameters": {"type": "object", "properties": {
        "origin": {"type": "string"}, "destination": {"type": "string"},
        "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        "cabin": {"type": "string", "enum": ["economy", "business", "first"]},
        "round_trip": {"type": "boolean"}},
        "required": ["origin", "destination", "passengers"]},
}
PRODUCTS = {
    "name": "search_products",
    "description": "Search the shop's catalogue",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "minLength": 1},
        "max_price": {"type": "number", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "in_stock": {"type": "boolean"}},
        "required": ["query"]},
}
EVENT = {
    "name": "create_event",
    "description": "Create a calendar event with its attendees",
    "parameters": {"type": "object", "properties": {
        "title": {"type": "string"},
        "date": {"type": "string", "format": "date"},
        "attendees": {"type": "array", "minItems": 1, "items": {
            "type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
            "required": ["name"]}}},
        "required": ["title", "attendees"]},
}
ALARM = {
    "name": "set_alarm",
    "description": "Set an alarm clock",
    "parameters": {"type": "object", "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
        "minute": {"type": "integer", "minimum": 0, "maximum": 59},
        "label": {"type": ["string", "null"], "maxLength": 30},
        "days": {"type": "array", "items": {"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}}},
        "required": ["hour", "minute"]},
}
PROMPTS = {
    "get_weather": ["What's the weather in Paris?", "Is it cold in Oslo today?", "天气怎么样，上海？",
                    "Do I need an umbrella in London?", "Temperature in Cairo please", "Weather for Lima in fahrenheit",
                    "How warm is Sydney?", "Will it rain in Mumbai?", "hello", "Tell me about the sea."],
    "book_flight": ["Book me a flight from Paris to Rome", "Two tickets Berlin to Madrid, business class",
                    "I need to fly from Tokyo to Seoul with my family of four", "从北京飞到广州", "round trip NYC to LA",
                    "flight please", "Get me to Lisbon from Porto, first class, one way", "three of us, Oslo to Bergen",
                    "What is a flight?", "Book the cheapest trip to Dublin from Cork"],
    "search_products": ["red running shoes under 50 dollars", "Find a laptop", "organic coffee in stock",
                        "cheap headphones", "我想买一本书", "gift ideas for a 5 year old", "tags: summer, beach",
                        "anything", "the best tent for camping under 200", "socks"],
    "create_event": ["Lunch with Anna tomorrow", "Team meeting with Bob and Carol on 2026-03-01",
                     "Schedule a call with Dave", "生日聚会，邀请小明和小红", "Dinner at 8 with Eve (eve@example.com)",
                     "Plan the kickoff", "Remind me to meet Frank", "Standup with the whole team", "x", "Party!"],
    "set_alarm": ["Wake me up at 7", "Set an alarm for 6:30 on weekdays", "alarm at 23:15 labelled 'sleep'",
                  "早上八点叫我", "Alarm for noon", "every saturday at 9am", "in the evening", "set alarm",
                  "Wake up call 5:45", "Alarm for the meeting at half past two"],
}
FUNCTIONS = [WEATHER, FLIGHT, PRODUCTS, EVENT, ALARM]
BY_NAME = {f["name"]: f for f in FUNCTIONS}


def post(server, token, body, **kwargs):
    return requests.post(server.chat_url(), params={"access_token": token}, json=body, timeout=600, **kwargs)


def forced(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def test_forced_calls_over_50_prompts_always_parse_and_validate(server, token):
    cases = [(name, prompt) for name, prompts in PROMPTS.items() for prompt in prompts]
    assert len(cases) == 50

    def ask(case):
        name, prompt = case
        body = {"messages": [{"role": "user", "content": prompt}], "functions": FUNCTIONS,
                "tool_choice": forced(name), "max_output_tokens": 1024}
        return name, post(server, token, body).json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, cases))
    for name, answer in answers:
        assert answer.get("finish_reason") == "function_call", answer
        assert answer["result"] == "" and answer["function_call"]["name"] == name
        arguments = json.loads(answer["function_call"]["arguments"])
        jsonschema.validate(arguments, BY_NAME[name]["parameters"])
        assert answer["usage"]["completion_tokens"] > 0


def test_auto_answers_a_weather_question_with_a_call(server, token):
    body = {"messages": [{"role": "user", "content": "What's the weather like in Paris today?"}], "functions": [WEATHER]}
    answer = post(server, token, body).json()
    assert answer["finish_reason"] == "function_call", answer
    assert answer["function_call"]["name"] == "get_weather" and answer["result"] == ""
    jsonschema.validate(json.loads(answer["function_call"]["arguments"]), WEATHER["parameters"])


def test_a_replayed_conversation_with_a_call_and_its_result_is_answered(server, token):
    body = {"messages": [
        {"role": "user", "content": "What's the weather like in Paris today?"},
        {"role": "assistant", "content": "", "function_call": {
            "name": "get_weather", "arguments": '{"city": "Paris"}', "thoughts": "I should look it up."}},
        {"role": "function", "name": "get_weather", "content": '{"temperature": 21, "sky": "sunny"}'},
    ], "functions": [WEATHER], "max_output_tokens": 40}
    answer = post(server, token, body).json()
    assert "error_code" not in answer, answer
    assert answer["finish_reason"] in ("normal", "length", "function_call")
    # The same history without functions (as LangChain replays it, content null) is accepted too.
    body["messages"][1]["content"] = None
    del body["functions"]
    answer = post(server, token, body).json()
    assert "error_code" not in answer and "function_call" not in answer, answer


def test_a_streamed_call_arrives_whole_in_one_chunk(server, token):
    body = {"messages": [{"role": "user", "content": "Weather in Rome?"}], "functions": [WEATHER],
            "tool_choice": forced("get_weather"), "stream": True}
    response = post(server, token, body)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [orjson.loads(line[6:]) for line in response.text.split("\n") if line]
    assert len(chunks) == 1, chunks
    chunk = chunks[0]
    assert chunk["is_end"] is True and chunk["sentence_id"] == 0 and chunk["result"] == ""
    assert chunk["finish_reason"] == "function_call" and chunk["function_call"]["name"] == "get_weather"
    jsonschema.validate(json.loads(chunk["function_call"]["arguments"]), WEATHER["parameters"])
    assert chunk["usage"]["completion_tokens"] > 0


def test_text_answers_still_stream_when_functions_are_offered(server, token):
    body = {"messages": [{"role": "user", "content": "Write one sentence about the sea."}], "functions": [WEATHER],
            "stream": True, "max_output_tokens": 40, "top_p": 0}
    chunks = [orjson.loads(line[6:]) for line in post(server, token, body).text.split("\n") if line]
    last = chunks[-1]
    if last["finish_reason"] == "function_call":  # the 135M model's decision; the wire is what we check
        assert len(chunks) == 1
    else:
        assert "".join(c["result"] for c in chunks) and all("function_call" not in c for c in chunks)


@pytest.mark.parametrize("body, code, message", [
    ({"functions": {"name": "x"}}, 336001, "Invalid Argument"),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, 336003, "functions description can't be blank"),
    ({"functions": [{"description": "d", "parameters": {"type": "object"}}]}, 336003, "functions name can't be blank"),
    ({"functions": [{"name": "f", "description": "d"}]}, 336003, "functions parameters can't be blank"),
    ({"functions": [{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": 1}}}}]},
     336003, "functions parameters is not a valid json schema"),
    ({"functions": [WEATHER], "tool_choice": forced("nope")}, 336003, "tool_choice function name must be one of functions"),
    # Valid JSON schemas the grammar cannot enforce are refused, not left unenforced.
    ({"functions": [{"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 18}}}}]},
     336003, "functions parameters is not supported"),
])
def test_bad_functions_bodies_get_their_codes(server, token, body, code, message):
    answer = post(server, token, {"messages": [{"role": "user", "content": "hi"}], **body}).json()
    assert (answer["error_code"], answer["error_msg"]) == (code, message)


def test_call_arguments_are_moderated(tmp_path):
    """A deny term in a call's arguments withholds the call (level 2); a level-1 term is reported
    with flag 1 but never masked inside arguments a program must parse."""
    lexicon = tmp_path / "deny.tsv"
    lexicon.write_text("zorblax\tdemo\t2\nquibbleflux\tdemo\t1\n")
    creds = cli_json(tmp_path, "app", "create", "a")
    cli_json(tmp_path, "service", "publish", "guarded")
    server = start_server(tmp_path, "--safety-lexicon", str(lexicon))
    try:
        server.creds = creds
        token = server.token()

        def call_with(word):
            function = {"name": "say", "description": "Say a fixed word", "parameters": {
                "type": "object", "properties": {"word": {"const": word}}, "required": ["word"]}}
            body = {"messages": [{"role": "user", "content": "go"}], "functions": [function],
                    "tool_choice": forced("say")}
            return requests.post(server.chat_url("guarded"), params={"access_token": token}, json=body,
                                 timeout=300).json()

        blocked = call_with("zorblax")
        assert blocked["finish_reason"] == "content_filter" and "function_call" not in blocked, blocked
        assert blocked["flag"] == 2 and blocked["need_clear_history"] is False and blocked["result"] == ""
        flagged = call_with("quibbleflux")
        assert flagged["finish_reason"] == "function_call" and flagged["flag"] == 1, flagged
        assert json.loads(flagged["function_call"]["arguments"]) == {"word": "quibbleflux"}
        clean = call_with("hello")
        assert clean["finish_reason"] == "function_call" and "flag" not in clean
    finally:
        stop_server(server)
