"""Function calling from unmodified clients against the real server: the `qianfan` SDK's
`ChatCompletion().do(functions=…)`, and LangChain's `QianfanChatEndpoint` with `bind(functions=…)`
and `with_structured_output`. Each scenario runs in a fresh interpreter (the SDK reads its
QIANFAN_* settings once per process); LangChain runs offline (no tracing, no network but loopback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

API_PATH = "fc_svc"
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]},
}

PRELUDE = f"""
import json, os
def emit(obj):
    print("@@" + json.dumps(obj, ensure_ascii=False), flush=True)
WEATHER = {json.dumps(WEATHER)}
QUESTION = "What's the weather like in Paris today?"
FORCE = {{"type": "function", "function": {{"name": "get_weather"}}}}
"""

SCENARIOS = {
    "sdk_do": """
import qianfan
chat = qianfan.ChatCompletion(endpoint=os.environ["E2E_API_PATH"])
resp = chat.do(messages=[{"role": "user", "content": QUESTION}], functions=[WEATHER], tool_choice=FORCE)
emit(resp.body)
# The SDK's own history helper: the call, then the function's result, answered as text.
messages = qianfan.Messages()
messages.append(QUESTION)
messages.append(resp)
messages.append(json.dumps({"temperature": 21}))
follow = chat.do(messages=messages, functions=[WEATHER], max_output_tokens=30)
emit(follow.body)
""",
    "sdk_stream": """
import qianfan
chat = qianfan.ChatCompletion(endpoint=os.environ["E2E_API_PATH"])
for resp in chat.do(messages=[{"role": "user", "content": QUESTION}], functions=[WEATHER], tool_choice=FORCE,
                    stream=True):
    emit(resp.body)
""",
    "langchain_bind": """
from langchain_community.chat_models import QianfanChatEndpoint
from langchain_core.messages import HumanMessage, ToolMessage
chat = QianfanChatEndpoint(endpoint=os.environ["E2E_API_PATH"])
bound = chat.bind(functions=[WEATHER], tool_choice=FORCE)
message = bound.invoke(QUESTION)
emit({"content": message.content, "function_call": message.additional_kwargs.get("function_call"),
      "tool_calls": message.tool_calls})
# Replay: LangChain sends the call with content null and the result as a `function` message.
history = [HumanMessage(QUESTION), message,
           ToolMessage(content='{"temperature": 21}', tool_call_id=message.tool_calls[0]["id"], name="get_weather")]
answer = chat.bind(functions=[WEATHER]).invoke(history)
emit({"content": answer.content, "function_call": answer.additional_kwargs.get("function_call")})
""",
    "langchain_structured": """
from typing import Literal, Optional
from pydantic import BaseModel, Field
from langchain_community.chat_models import QianfanChatEndpoint
class Weather(BaseModel):
    \"\"\"Get the current weather for a city\"\"\"
    city: str = Field(description="the city name")
    unit: Optional[Literal["celsius", "fahrenheit"]] = None
forced = {"type": "function", "function": {"name": "Weather"}}
chat = QianfanChatEndpoint(endpoint=os.environ["E2E_API_PATH"], model_kwargs={"tool_choice": forced})
result = chat.with_structured_output(Weather).invoke(QUESTION)
emit({"type": type(result).__name__, "value": result.model_dump() if result is not None else None})
auto = QianfanChatEndpoint(endpoint=os.environ["E2E_API_PATH"]).with_structured_output(Weather, include_raw=True)
raw = auto.invoke(QUESTION)
emit({"parsed": raw["parsed"].model_dump() if raw["parsed"] is not None else None,
      "function_call": raw["raw"].additional_kwargs.get("function_call")})
""",
}


@pytest.fixture(scope="module")
def fc_service(server):
    server.cli("service", "publish", API_PATH, "--model", "default", "--profile", "ERNIE-Speed-8K",
               "--rpm", "100000", "--tpm", "100000000")
    return API_PATH


def run(server, scenario: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "LANGCHAIN_", "LANGSMITH_"))}
    env.update(
        QIANFAN_AK=server.creds["api_key"], QIANFAN_SK=server.creds["secret_key"],
        QIANFAN_BASE_URL=server.base_url, QIANFAN_CONSOLE_API_BASE_URL=server.base_url,
        E2E_API_PATH=API_PATH, LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false",
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )
    out = subprocess.run([sys.executable, "-c", PRELUDE + SCENARIOS[scenario]], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{scenario} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("@@")]


def valid_weather(arguments: str | dict) -> dict:
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(value, WEATHER["parameters"])
    return value


def test_sdk_do_with_functions_and_the_replayed_call(server, fc_service):
    call, follow = run(server, "sdk_do")
    assert call["finish_reason"] == "function_call" and call["result"] == ""
    assert call["function_call"]["name"] == "get_weather"
    valid_weather(call["function_call"]["arguments"])
    assert "error_code" not in follow, follow
    assert follow["finish_reason"] in ("normal", "length", "function_call")


def test_sdk_stream_with_functions(server, fc_service):
    chunks = run(server, "sdk_stream")
    assert len(chunks) == 1 and chunks[0]["is_end"] is True
    assert chunks[0]["function_call"]["name"] == "get_weather"
    valid_weather(chunks[0]["function_call"]["arguments"])


def test_langchain_bind_functions_and_replay(server, fc_service):
    bound, replay = run(server, "langchain_bind")
    assert bound["content"] == "" and bound["function_call"]["name"] == "get_weather"
    valid_weather(bound["function_call"]["arguments"])
    assert bound["tool_calls"][0]["name"] == "get_weather"
    assert replay["content"] or replay["function_call"]


def test_langchain_with_structured_output(server, fc_service):
    forced, auto = run(server, "langchain_structured")
    assert forced["type"] == "Weather" and forced["value"]["city"]
    # tool_choice auto: the default 135M model calls for this question (see the threshold in README).
    assert auto["function_call"] is not None and auto["parsed"] is not None, auto
    assert isinstance(auto["parsed"]["city"], str)
