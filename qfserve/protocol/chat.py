"""The chat request as the seed documents it, validated field by field with exact error messages.

Parsing is by hand rather than by pydantic's own validation because every failure must map to one
Qianfan code and message (qianfan-wire.md §3), in the order the checks are listed here.
Unknown fields are ignored and `null` counts as absent (LangChain sends `"stop": null`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from qfserve.protocol.errors import (
    MSG_EVEN_ROLE,
    MSG_ODD_LENGTH,
    MSG_ODD_ROLE,
    Code,
    QianfanError,
    out_of_range,
)
from qfserve.protocol.functions import (
    Function,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    parse_function_call,
    parse_function_message_name,
    parse_functions,
    parse_tool_choice,
)

MAX_STOP_ITEMS = 4
MAX_STOP_CHARS = 20
MAX_TOP_LOGPROBS = 20
# An end user's id is an identifier, not text: it keys stored memories and is logged.
MAX_USER_ID_CHARS = 128


class Message(NamedTuple):
    # A plain tuple, not a model: a body may hold a hundred thousand of them, validated by hand below.
    role: str
    content: str  # "" on an assistant turn that only called functions
    name: str | None = None  # the function a `function` message answers
    tool_calls: tuple[ToolCall, ...] = ()  # calls an assistant turn made (v1: one function_call)
    tool_call_id: str | None = None  # v2 `tool` messages

    def as_engine_dict(self) -> dict:
        """The turn as Engine.chat_tokens takes it."""
        turn: dict = {"role": self.role, "content": self.content}
        if self.name is not None:
            turn["name"] = self.name
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            turn["tool_calls"] = [{"name": c.name, "arguments": c.arguments, "thoughts": c.thoughts,
                                   **({"id": c.id} if c.id else {})} for c in self.tool_calls]
        return turn


class ChatRequest(BaseModel):
    """A validated chat body. Defaults are the seed's."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...]
    stream: bool = False
    system: str | None = None
    temperature: float = 0.95
    top_p: float = 0.7
    penalty_score: float = 1.0
    min_output_tokens: int | None = None
    max_output_tokens: int = 1024
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.1
    presence_penalty: float = 0.0
    # Only meaningful with group beam search, which neither engine offers: validated, then unused.
    diversity_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int | None = None
    enable_user_memory: bool = False
    user_memory_extract_level: int = 0
    user_memory_level: int = 1
    user_setting: str | None = None
    user_id: str | None = None
    # Extension (not in the seed; as vLLM, llama-server and the v2 surface's OpenAI `seed`): an
    # integer that makes sampling reproducible on the embedded engine. Absent: a fresh random draw.
    seed: int | None = None
    functions: tuple[Function, ...] = ()
    tool_choice: ToolChoice | None = None  # None: auto
    response_format: ResponseFormat | None = None  # v2 only

    def input_chars(self) -> int:
        """Characters counted against the profile's limit: system, user_setting and every message content
        (and the arguments of the calls earlier turns made).

        `user_setting` counts because it is caller text that is moderated and may reach the prompt;
        left out, it was an unbounded field (only the body size capped it).
        """
        calls = sum(len(c.arguments) for m in self.messages for c in m.tool_calls)
        return len(self.system or "") + len(self.user_setting or "") + sum(len(m.content) for m in self.messages) + calls


class DeferredChatError:
    """A chat body already parsed (off the event loop) and found invalid. `parse_chat_request` raises
    its error when handed it, so the error still comes at its place among the request's checks."""

    def __init__(self, error: QianfanError):
        self.error = error


def parse_chat_body(body: Any) -> ChatRequest | DeferredChatError:
    """`parse_chat_request` that returns its error instead of raising it: for parsing ahead, in a thread."""
    try:
        return parse_chat_request(body)
    except QianfanError as error:
        return DeferredChatError(error)


def _invalid_type(name: str) -> QianfanError:
    # The v1 table's message is fixed (qianfan-wire.md §3); v2 names the field from `param`.
    return QianfanError(Code.INVALID_ARGUMENT, param=name)


def _number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid_type(name)
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name)
    return value


def _boolean(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _invalid_type(name)
    return value


def _string(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid_type(name)
    return value


def check_user_id(user_id: str | None) -> str | None:
    if user_id is not None and len(user_id) > MAX_USER_ID_CHARS:
        raise out_of_range(f"the length of user_id can not exceed {MAX_USER_ID_CHARS} characters")
    return user_id


def _closed(name: str, value: float | None, low: float, high: float, shown: str) -> None:
    if value is not None and not (low <= value <= high):
        raise out_of_range(f"the range of {name} is {shown}")


def _parse_messages(raw: Any) -> tuple[Message, ...]:
    if isinstance(raw, tuple) and all(isinstance(m, Message) for m in raw):
        return raw  # turns another surface parsed already (v2: tool calls and their results)
    if raw is None:
        raise QianfanError(Code.INVALID_ARGUMENT)
    if not isinstance(raw, list):
        raise _invalid_type("messages")
    if not raw:
        raise out_of_range("messages can not be empty")
    messages = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _invalid_type(f"messages[{index}]")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str):
            raise _invalid_type(f"messages[{index}].role")
        # An assistant turn that called a function may have empty content (LangChain sends null).
        calls = ()
        if role == "assistant" and item.get("function_call") is not None:
            calls = (parse_function_call(item["function_call"]),)
            content = "" if content is None else content
        if content is None:  # a required field missing: the table's code for that, as for `messages`
            raise QianfanError(Code.INVALID_ARGUMENT)
        if not isinstance(content, str):
            raise _invalid_type(f"messages[{index}].content")
        if not content and not calls:
            raise out_of_range("message content can not be empty")
        name = parse_function_message_name(item.get("name")) if role == "function" else None
        messages.append(Message(role, content, name, calls))
    if len(messages) % 2 == 0:
        raise QianfanError(Code.MESSAGES_STRUCTURE, MSG_ODD_LENGTH)
    for index, message in enumerate(messages):
        if index % 2 == 1 and message.role != "assistant":
            raise QianfanError(Code.MESSAGES_STRUCTURE, MSG_ODD_ROLE)
        if index % 2 == 0 and message.role not in ("user", "function"):
            raise QianfanError(Code.MESSAGES_STRUCTURE, MSG_EVEN_ROLE)
    return tuple(messages)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body. Raises QianfanError with the documented code and message.

    A ChatRequest passes through as it is, and a DeferredChatError raises its error: the HTTP layer
    may have parsed a large body in a thread already.
    """
    if isinstance(body, ChatRequest):
        return body
    if isinstance(body, DeferredChatError):
        raise body.error
    if not isinstance(body, dict):
        raise QianfanError(Code.INVALID_JSON)
    messages = _parse_messages(body.get("messages"))
    fields: dict[str, Any] = {"messages": messages}

    for name in ("stream", "logprobs", "enable_user_memory"):
        if (value := _boolean(body, name)) is not None:
            fields[name] = value
    for name in ("system", "user_setting", "user_id"):
        if (value := _string(body, name)) is not None:
            fields[name] = value
    check_user_id(fields.get("user_id"))

    temperature = _number(body, "temperature")
    if temperature is not None and not (0.0 < temperature <= 1.0):
        raise out_of_range("the range of temperature is (0, 1.0]")
    ranges = {
        "top_p": (0.0, 1.0, "[0, 1.0]"),
        "penalty_score": (1.0, 2.0, "[1.0, 2.0]"),
        "frequency_penalty": (-2.0, 2.0, "[-2.0, 2.0]"),
        "presence_penalty": (-2.0, 2.0, "[-2.0, 2.0]"),
        "diversity_penalty": (0.0, 100.0, "[0, 100]"),
    }
    if temperature is not None:
        fields["temperature"] = temperature
    for name, (low, high, shown) in ranges.items():
        value = _number(body, name)
        _closed(name, value, low, high, shown)
        if value is not None:
            fields[name] = value

    int_ranges = {
        "min_output_tokens": (2, 2048, "[2, 2048]"),
        "max_output_tokens": (2, 2048, "[2, 2048]"),
        "user_memory_extract_level": (0, 2, "[0, 2]"),
        "user_memory_level": (0, 4, "[0, 4]"),
        "top_logprobs": (0, MAX_TOP_LOGPROBS, f"[0, {MAX_TOP_LOGPROBS}]"),
    }
    for name, (low, high, shown) in int_ranges.items():
        value = _integer(body, name)
        _closed(name, value, low, high, shown)
        if value is not None:
            fields[name] = value

    if (seed := _integer(body, "seed")) is not None:
        fields["seed"] = seed

    stop = body.get("stop")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _invalid_type("stop")
        if len(stop) > MAX_STOP_ITEMS:
            raise out_of_range(f"the length of stop can not exceed {MAX_STOP_ITEMS}")
        if any(len(s) > MAX_STOP_CHARS for s in stop):
            raise out_of_range(f"the length of each stop element can not exceed {MAX_STOP_CHARS} characters")
        fields["stop"] = tuple(s for s in stop if s)

    fields["functions"] = parse_functions(body.get("functions"))
    fields["tool_choice"] = parse_tool_choice(body.get("tool_choice"), fields["functions"])

    # Every field was checked above, with the wire's own errors: build without validating again.
    request = ChatRequest.model_construct(**fields)
    if request.min_output_tokens is not None and request.min_output_tokens > request.max_output_tokens:
        raise out_of_range("min_output_tokens can not be greater than max_output_tokens")
    if request.top_logprobs is not None and not request.logprobs:
        raise out_of_range("top_logprobs requires logprobs to be true")
    if request.enable_user_memory and not request.user_id:
        raise out_of_range("user_id is required when enable_user_memory is true")
    return request
