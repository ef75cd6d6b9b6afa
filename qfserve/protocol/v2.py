"""The v2 surface: Qianfan v2's OpenAI-compatible chat (`POST /v2/chat/completions`).

The parser turns an OpenAI-shaped body into the same neutral `ChatRequest` v1 produces: system
turns become `system`, text parts are joined, `max_completion_tokens`/`max_tokens` become
`max_output_tokens`, `user` becomes `user_id`; then the shared validation in `protocol/chat.py`
applies v1's (and v2's) ranges. Function calling maps onto the same neutral pieces v1's fields do
(protocol/functions.py): `tools` → `Function`s, `tool_choice` → `ToolChoice`, an assistant turn's
`tool_calls` → `ToolCall`s (ids kept), a `tool` message → a `function` turn naming the call it
answers, `response_format` → `ResponseFormat`. Unknown fields are ignored; features not built are
refused by name, each in its own check, rather than silently dropped.

The renderer turns serving's neutral events into `chat.completion` / `chat.completion.chunk`
objects: one chunk per text delta (no sentence chunking: OpenAI clients expect token deltas), a
function call as `tool_calls` (whole, in one delta), a last chunk with the finish reason, an
optional usage chunk, and `[DONE]` (framed by api/v2.py). Qianfan's
additions ride on each choice: `flag`, `need_clear_history`, and `ban_round` when it applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, AsyncIterator

import orjson
from pydantic import BaseModel, PrivateAttr

from qfserve.protocol import chat as neutral
from qfserve.protocol.chat import ChatRequest, Message, _boolean, _closed, _integer, _string
from qfserve.protocol.errors import Code, QianfanError, out_of_range
from qfserve.protocol.events import ChatEnd, ChatEvent, FunctionCall, TextDelta, TokenLogprob, Usage, Verdict
from qfserve.protocol.functions import Function, ResponseFormat, ToolCall, ToolChoice
from qfserve.protocol.v2_errors import INVALID_REQUEST, V2Error, invalid_argument, unsupported

MAX_OUTPUT_TOKENS = (2, 2048)
MAX_SEED = 2**32 - 1  # the engine's sampler seed is 32 bits
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512

# Body fields whose name, meaning and range are the same on both surfaces.
SHARED_FIELDS = (
    "stream", "temperature", "top_p", "penalty_score", "frequency_penalty", "presence_penalty",
    "logprobs", "top_logprobs", "enable_user_memory", "user_memory_extract_level", "user_memory_level",
    "user_setting", "user_id",
)

# The neutral finish reasons in OpenAI's words: a natural end is `stop` there.
FINISH_REASONS = {"normal": "stop", "stop": "stop", "length": "length", "content_filter": "content_filter",
                  "function_call": "tool_calls"}


# ---- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2ChatRequest:
    model: str  # the service's api_path
    chat: ChatRequest
    include_usage: bool = False  # stream_options.include_usage


def parse_model(body: Any) -> str:
    """The body's `model`, read before anything else: it names the service whose rules apply."""
    if not isinstance(body, dict):
        raise QianfanError(Code.INVALID_JSON)
    model = body.get("model")
    if model is None or model == "":
        raise V2Error(400, INVALID_REQUEST, "invalid_model", "model is empty")
    if not isinstance(model, str):
        raise QianfanError(Code.INVALID_ARGUMENT, param="model")
    return model


def parse_chat_request(body: Any) -> V2ChatRequest:
    """Validate a decoded v2 body. Raises QianfanError (answered through its v2 twin) or V2Error."""
    model = parse_model(body)
    refuse_unbuilt_features(body)
    system, messages = _parse_messages(body.get("messages"))
    functions = parse_tools(body.get("tools"))
    tool_choice = parse_tool_choice(body.get("tool_choice"), functions)
    response_format = parse_response_format(body.get("response_format"))

    fields: dict[str, Any] = {"messages": messages}
    if system is not None:
        fields["system"] = system
    for name in SHARED_FIELDS:
        if body.get(name) is not None:
            fields[name] = body[name]
    if (max_tokens := _max_output_tokens(body)) is not None:
        fields["max_output_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        fields["stop"] = [stop] if isinstance(stop, str) else stop
    user = _string(body, "user")
    if user is not None and fields.get("user_id") is None:
        fields["user_id"] = user

    n = _integer(body, "n")
    if n is not None and n != 1:
        raise invalid_argument("`n` must be 1: qfserve answers with one choice per request")
    seed = _integer(body, "seed")
    _closed("seed", seed, 0, MAX_SEED, f"[0, {MAX_SEED}]")
    include_usage = _stream_options(body)
    _check_metadata(body.get("metadata"))
    if body.get("extra_parameters") is not None and not isinstance(body["extra_parameters"], dict):
        raise QianfanError(Code.INVALID_ARGUMENT, param="extra_parameters")
    if body.get("parallel_tool_calls") is not None and not isinstance(body["parallel_tool_calls"], bool):
        raise QianfanError(Code.INVALID_ARGUMENT, param="parallel_tool_calls")

    chat = neutral.parse_chat_request(fields)
    update: dict[str, Any] = {"functions": functions, "tool_choice": tool_choice, "response_format": response_format}
    if seed is not None:
        update["seed"] = seed
    return V2ChatRequest(model, chat.model_copy(update=update), include_usage)


def refuse_unbuilt_features(body: dict) -> None:
    """Features v2 clients may ask for that qfserve does not offer: each refused by its name."""
    if body.get("functions"):
        raise unsupported("functions", "OpenAI's deprecated `functions` field is not served on v2: use `tools`")
    web_search = body.get("web_search")
    if web_search is not None and (not isinstance(web_search, dict) or web_search.get("enable")):
        raise unsupported("web_search", "this server has no web search")


def _refuse_image(index: int, part_index: int) -> None:
    raise unsupported(f"messages[{index}].content[{part_index}]", "images are not available on this server")


def _bad_messages(message: str) -> QianfanError:
    return QianfanError(Code.MESSAGES_STRUCTURE, message)


# ---- function calling and structured output -----------------------------------------------------

# OpenAI's rule for function and schema names.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NAME_RULE = "must be 1 to 64 letters, digits, underscores or dashes"
TOOL_CHOICE_FORMS = '"none", "auto", "required" or {"type": "function", "function": {"name": …}}'
NO_PARAMETERS = {"type": "object", "properties": {}}


def _check_schema(field: str, schema: dict) -> None:
    """A JSON schema of an object, or the error that names `field` and what is wrong."""
    import jsonschema

    kind = schema.get("type", "object")
    if kind != "object":
        raise invalid_argument(f'`{field}` must describe a JSON object ("type": "object"), not {kind!r}')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise invalid_argument(f"`{field}` is not a valid JSON schema: {error.message}") from None


def parse_tools(raw: Any) -> tuple[Function, ...]:
    """`tools`: `[{"type": "function", "function": {name, description?, parameters?, strict?}}]`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise invalid_argument("`tools` must be an array of tools")
    functions: list[Function] = []
    for index, tool in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise invalid_argument(f'`{where}` must be an object: {{"type": "function", "function": {{…}}}}')
        if tool.get("type") != "function":
            raise invalid_argument(f'`{where}.type` must be "function", not {tool.get("type")!r}')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise invalid_argument(f"`{where}.function` is required: an object with name, description and parameters")
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise invalid_argument(f"`{where}.function.name` {NAME_RULE}")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid_argument(f"`{where}.function.description` must be a string")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = NO_PARAMETERS
        if not isinstance(parameters, dict):
            raise invalid_argument(f"`{where}.function.parameters` must be a JSON schema object")
        _check_schema(f"{where}.function.parameters", parameters)
        if any(f.name == name for f in functions):
            raise invalid_argument(f"`tools` must name each function once: {name!r} appears twice")
        functions.append(Function(name=name, description=description or "", parameters=parameters))
    return tuple(functions)


def parse_tool_choice(raw: Any, functions: tuple[Function, ...]) -> ToolChoice | None:
    """`tool_choice`: "none", "auto", "required" or a named function. None (absent) is auto."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise invalid_argument(f"`tool_choice` must be {TOOL_CHOICE_FORMS}, not {raw!r}")
        if raw == "required" and not functions:
            raise invalid_argument('`tool_choice` "required" needs `tools`')
        return ToolChoice(mode=raw)
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(function, dict) \
            or not isinstance(function.get("name"), str):
        raise invalid_argument(f"`tool_choice` must be {TOOL_CHOICE_FORMS}")
    name = function["name"]
    if name not in {f.name for f in functions}:
        raise invalid_argument(f"`tool_choice` names the function {name!r}, which is not one of `tools`")
    return ToolChoice(mode="function", name=name)


def parse_response_format(raw: Any) -> ResponseFormat | None:
    """`response_format`: text (the default), `json_object`, or `json_schema` (always enforced by
    constrained decoding, `strict` or not)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid_argument('`response_format` must be an object such as {"type": "json_object"}')
    kind = raw.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        raise invalid_argument(f'`response_format.type` must be "text", "json_object" or "json_schema", not {kind!r}')
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_argument('`response_format.json_schema` is required with type "json_schema": '
                               '{"name": …, "schema": {…}, "strict": true}')
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise invalid_argument(f"`response_format.json_schema.name` {NAME_RULE}")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise invalid_argument("`response_format.json_schema.schema` is required: a JSON schema object")
    _check_schema("response_format.json_schema.schema", schema)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_argument("`response_format.json_schema.strict` must be a boolean")
    return ResponseFormat(type="json_schema", json_schema=schema, strict=bool(strict))


def _parse_tool_calls(index: int, raw: Any) -> tuple[ToolCall, ...]:
    """An assistant turn's `tool_calls`: `[{"id", "type": "function", "function": {name, arguments}}]`."""
    if not isinstance(raw, list):
        raise _bad_messages(f"messages[{index}].tool_calls must be an array")
    calls: list[ToolCall] = []
    for position, call in enumerate(raw):
        where = f"messages[{index}].tool_calls[{position}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function" \
                or not isinstance(call.get("function"), dict):
            raise _bad_messages(f'{where} must be {{"id": …, "type": "function", "function": {{"name": …, '
                                '"arguments": …}}}}')
        call_id, function = call.get("id"), call["function"]
        if not isinstance(call_id, str) or not call_id:
            raise _bad_messages(f"{where}.id is required: tool messages answer the call by this id")
        if any(c.id == call_id for c in calls):
            raise _bad_messages(f"{where}.id {call_id!r} is used twice")
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not name.strip():
            raise _bad_messages(f"{where}.function.name is required")
        if isinstance(arguments, dict):  # some clients send the object itself
            arguments = orjson.dumps(arguments).decode()
        if arguments is not None and not isinstance(arguments, str):
            raise _bad_messages(f"{where}.function.arguments must be a string of JSON")
        calls.append(ToolCall(name=name, arguments=arguments or "{}", id=call_id))
    return tuple(calls)


# ---- messages ------------------------------------------------------------------------------------


def _parse_messages(raw: Any) -> tuple[str | None, tuple[Message, ...]]:
    """Leading system (or developer) messages become `system`; the rest alternate user, assistant,
    …, user, where the tool messages answering an assistant turn's `tool_calls` stand in a user
    turn's place (one message per call, each naming its call's id)."""
    if raw is None:
        raise _bad_messages("messages is required")
    if not isinstance(raw, list):
        raise _bad_messages("messages must be an array")
    if not raw:
        raise _bad_messages("messages can not be empty")
    system_parts: list[str] = []
    conversation: list[tuple[int, Message]] = []  # (index in the body, the turn)
    unanswered: dict[str, str] | None = None  # call id -> function name, after an assistant turn's tool_calls
    calling_index = -1
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad_messages(f"messages[{index}] must be an object")
        role = item.get("role")
        if not isinstance(role, str):
            raise _bad_messages(f"messages[{index}].role must be a string")
        if role == "function":
            raise unsupported(f"messages[{index}].role", "OpenAI's deprecated 'function' messages are not "
                                                         "served on v2: use 'tool' messages with a tool_call_id")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise _bad_messages(f"messages[{index}].role must be system, user, assistant or tool, not {role!r}")
        if role == "tool":
            if unanswered is None:
                raise _bad_messages(f"messages[{index}]: a tool message must follow an assistant message "
                                    "with tool_calls")
            call_id = item.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad_messages(f"messages[{index}].tool_call_id is required: the id of the call it answers")
            if call_id not in unanswered:
                raise _bad_messages(f"messages[{index}].tool_call_id {call_id!r} does not name an unanswered "
                                    f"tool call of messages[{calling_index}]")
            text = _content_text(index, item.get("content"))
            conversation.append((index, Message("function", text, unanswered.pop(call_id), tool_call_id=call_id)))
            continue
        if unanswered:
            raise _bad_messages(f"messages[{index}]: every tool call of messages[{calling_index}] must be "
                                f"answered by a tool message first (unanswered: {', '.join(unanswered)})")
        unanswered = None
        if role == "assistant" and item.get("tool_calls"):
            calls = _parse_tool_calls(index, item["tool_calls"])
            content = item.get("content")
            text = "" if content is None else _content_text(index, content)
            conversation.append((index, Message("assistant", text, tool_calls=calls)))
            unanswered, calling_index = {c.id: c.name for c in calls}, index
            continue
        text = _content_text(index, item.get("content"))
        if role in ("system", "developer"):
            if conversation:
                raise _bad_messages(f"messages[{index}]: system messages must come before the conversation")
            system_parts.append(text)
            continue
        if not text.strip():
            raise out_of_range(f"messages[{index}].content can not be empty")
        conversation.append((index, Message(role, text)))
    if unanswered:
        raise _bad_messages(f"every tool call of messages[{calling_index}] must be answered by a tool message "
                            f"(unanswered: {', '.join(unanswered)})")
    if not conversation:
        raise _bad_messages("messages must contain a user message")
    # The tool messages answering one turn's calls take one user turn's place.
    turns = [(index, m) for position, (index, m) in enumerate(conversation)
             if not (m.role == "function" and position and conversation[position - 1][1].role == "function")]
    if len(turns) % 2 == 0:
        raise _bad_messages("the user and assistant messages must be an odd number: user, assistant, …, user")
    for position, (index, message) in enumerate(turns):
        expected = ("user", "function") if position % 2 == 0 else ("assistant",)
        if message.role not in expected:
            raise _bad_messages(f"messages[{index}] must be a {'user' if position % 2 == 0 else 'assistant'} "
                                "message: user and assistant turns alternate")
    system = "\n\n".join(system_parts) if system_parts else None
    return system, tuple(m for _, m in conversation)


def _content_text(index: int, content: Any) -> str:
    """A message's text: a string, or an array of text parts (joined by newlines, as vLLM does)."""
    if content is None:
        raise _bad_messages(f"messages[{index}].content is required")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_messages(f"messages[{index}].content must be a string or an array of content parts")
    texts = []
    for part_index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("image_url", "image", "input_image"):
            _refuse_image(index, part_index)
        if kind != "text" or not isinstance(part.get("text"), str):
            raise _bad_messages(f"messages[{index}].content[{part_index}] must be a text part: "
                                '{"type": "text", "text": "…"}')
        texts.append(part["text"])
    return "\n".join(texts)


def _max_output_tokens(body: dict) -> int | None:
    """`max_completion_tokens` (OpenAI's current name) wins over `max_tokens` (its older one)."""
    low, high = MAX_OUTPUT_TOKENS
    found = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = _integer(body, name)
        _closed(name, value, low, high, f"[{low}, {high}]")
        if value is not None:
            found = value
    return found


def _stream_options(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise QianfanError(Code.INVALID_ARGUMENT, param="stream_options")
    return bool(_boolean(options, "include_usage"))


def _check_metadata(metadata: Any) -> None:
    """OpenAI's `metadata`: up to 16 string pairs. Accepted and kept out of generation."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise invalid_argument("`metadata` must be an object of string values")
    if len(metadata) > MAX_METADATA_KEYS:
        raise invalid_argument(f"`metadata` can hold at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
            raise invalid_argument(f"`metadata` keys are at most {MAX_METADATA_KEY_CHARS} characters and "
                                   f"values at most {MAX_METADATA_VALUE_CHARS}")


# ---- the answer ----------------------------------------------------------------------------------


class V2Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> "V2Usage":
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   total_tokens=usage.total_tokens)


class V2Function(BaseModel):
    name: str
    arguments: str  # JSON text


class V2ToolCall(BaseModel):
    id: str
    type: str = "function"
    function: V2Function

    @classmethod
    def of(cls, call: FunctionCall) -> "V2ToolCall":
        return cls(id=call.id, function=V2Function(name=call.name, arguments=call.arguments))


class V2DeltaToolCall(V2ToolCall):
    index: int = 0  # a call arrives whole in one delta


class V2Message(BaseModel):
    role: str = "assistant"
    content: str | None  # null when the answer is a call
    tool_calls: list[V2ToolCall] | None = None


class V2Delta(BaseModel):
    role: str | None = None  # on the first chunk only
    content: str | None = None  # absent on the last chunk
    tool_calls: list[V2DeltaToolCall] | None = None


class V2Choice(BaseModel):
    index: int = 0
    message: V2Message
    finish_reason: str
    flag: int
    need_clear_history: bool
    ban_round: int | None = None  # only when need_clear_history
    logprobs: dict | None = None


class V2ChunkChoice(BaseModel):
    index: int = 0
    delta: V2Delta
    finish_reason: str | None = None
    flag: int
    need_clear_history: bool
    ban_round: int | None = None
    logprobs: dict | None = None


class V2Completion(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[V2Choice]
    usage: V2Usage


class V2Chunk(BaseModel):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[V2ChunkChoice]
    usage: V2Usage | None = None
    _with_usage: bool = PrivateAttr(default=False)  # stream_options.include_usage: `usage` on every chunk


# Absent rather than null when they do not apply (a message's `content` stays: null beside tool_calls).
_OMIT_WHEN_NONE = {"ban_round", "tool_calls"}
_OMIT_IN_DELTA = {"role", "content"}


def _prune(value: Any, omit: set[str] = _OMIT_WHEN_NONE) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v, _OMIT_WHEN_NONE | _OMIT_IN_DELTA if k == "delta" else _OMIT_WHEN_NONE)
                for k, v in value.items() if not (v is None and k in omit)}
    if isinstance(value, list):
        return [_prune(v, omit) for v in value]
    return value


def dump(model: V2Completion | V2Chunk) -> bytes:
    data = model.model_dump()
    if isinstance(model, V2Chunk) and not model._with_usage:
        data.pop("usage")
    return orjson.dumps(_prune(data))


def _verdict_fields(verdict: Verdict) -> dict:
    return {"flag": verdict.flag, "need_clear_history": verdict.need_clear_history, "ban_round": verdict.ban_round}


def _logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict:
    """OpenAI's shape, with each token's UTF-8 bytes."""
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [
        {**entry(e.token, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs]}
        for e in entries
    ]}


async def render_stream(request_id: str, model: str, created: int, events: AsyncIterator[ChatEvent], *,
                        logprobs: bool = False, include_usage: bool = False) -> AsyncIterator[V2Chunk]:
    """A chunk per text delta (the first says the role), a last chunk with the finish reason, and
    with `include_usage` a usage chunk with no choices."""
    first = True

    def chunk(choices: list[V2ChunkChoice], usage: Usage | None = None) -> V2Chunk:
        made = V2Chunk(id=request_id, created=created, model=model, choices=choices,
                       usage=V2Usage.of(usage) if usage is not None else None)
        made._with_usage = include_usage
        return made

    async for event in events:
        if isinstance(event, TextDelta):
            if not event.text and not (logprobs and event.logprobs):
                continue
            delta = V2Delta(role="assistant" if first else None, content=event.text)
            first = False
            yield chunk([V2ChunkChoice(delta=delta, **_verdict_fields(event.verdict),
                                       logprobs=_logprobs(event.logprobs) if logprobs else None)])
        elif isinstance(event, FunctionCall):
            call = V2DeltaToolCall(**V2ToolCall.of(event).model_dump())
            delta = V2Delta(role="assistant" if first else None, tool_calls=[call])
            first = False
            yield chunk([V2ChunkChoice(delta=delta, **_verdict_fields(event.verdict))])
        elif isinstance(event, ChatEnd):
            delta = V2Delta(role="assistant", content="") if first else V2Delta()
            yield chunk([V2ChunkChoice(delta=delta, finish_reason=FINISH_REASONS[event.finish_reason],
                                       **_verdict_fields(event.verdict))])
            if include_usage:
                yield chunk([], event.usage)


async def render_completion(request_id: str, model: str, created: int, events: AsyncIterator[ChatEvent], *,
                            logprobs: bool = False) -> V2Completion:
    """The sync answer: every delta joined, a call as `message.tool_calls` (content null). At flag 3
    the content must not be shown: it is empty and no logprobs are returned."""
    parts: list[str] = []
    entries: list[TokenLogprob] = []
    end: ChatEnd | None = None
    calls: list[V2ToolCall] = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
            entries.extend(event.logprobs)
        elif isinstance(event, FunctionCall):
            calls.append(V2ToolCall.of(event))
        else:
            end = event
    assert end is not None, "serving ends every answer with a ChatEnd"
    hidden = end.verdict.flag >= 3
    text = "" if hidden else "".join(parts)
    choice = V2Choice(
        message=V2Message(content=text or None, tool_calls=calls) if calls else V2Message(content=text),
        finish_reason=FINISH_REASONS[end.finish_reason], **_verdict_fields(end.verdict),
        logprobs=_logprobs(entries) if logprobs and not hidden else None,
    )
    return V2Completion(id=request_id, created=created, model=model, choices=[choice], usage=V2Usage.of(end.usage))
