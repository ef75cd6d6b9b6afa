"""The v2 surface: Qianfan v2's OpenAI-compatible chat (`POST /v2/chat/completions`).

The parser turns an OpenAI-shaped body into the same neutral `ChatRequest` v1 produces: system
turns become `system`, text parts are joined, `max_completion_tokens`/`max_tokens` become
`max_output_tokens`, `user` becomes `user_id`; then the shared validation in `protocol/chat.py`
applies v1's (and v2's) ranges. Unknown fields are ignored; features not built yet are refused by
name, each in its own check, rather than silently dropped.

The renderer turns serving's neutral events into `chat.completion` / `chat.completion.chunk`
objects: one chunk per text delta (no sentence chunking: OpenAI clients expect token deltas), a last
chunk with the finish reason, an optional usage chunk, and `[DONE]` (framed by api/v2.py). Qianfan's
additions ride on each choice: `flag`, `need_clear_history`, and `ban_round` when it applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator

import orjson
from pydantic import BaseModel, PrivateAttr

from qfserve.protocol import chat as neutral
from qfserve.protocol.chat import ChatRequest, _boolean, _closed, _integer, _string
from qfserve.protocol.errors import Code, QianfanError, out_of_range
from qfserve.protocol.events import ChatEnd, ChatEvent, TextDelta, TokenLogprob, Usage, Verdict
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
FINISH_REASONS = {"normal": "stop", "stop": "stop", "length": "length", "content_filter": "content_filter"}


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

    chat = neutral.parse_chat_request(fields)
    if seed is not None:
        chat = chat.model_copy(update={"seed": seed})
    return V2ChatRequest(model, chat, include_usage)


def refuse_unbuilt_features(body: dict) -> None:
    """Features v2 clients may ask for that qfserve does not offer yet: each refused by its name."""
    if body.get("tools"):
        raise unsupported("tools", "function calling is not available on this server")
    if body.get("functions"):
        raise unsupported("functions", "function calling is not available on this server")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            raise unsupported("response_format", f"type {kind!r}: only \"text\" is available on this server")
    web_search = body.get("web_search")
    if web_search is not None and (not isinstance(web_search, dict) or web_search.get("enable")):
        raise unsupported("web_search", "this server has no web search")


def _refuse_unbuilt_role(index: int, role: str) -> None:
    if role in ("tool", "function"):
        raise unsupported(f"messages[{index}].role", f"{role!r} messages need function calling, "
                                                     "which is not available on this server")


def _refuse_image(index: int, part_index: int) -> None:
    raise unsupported(f"messages[{index}].content[{part_index}]", "images are not available on this server")


def _bad_messages(message: str) -> QianfanError:
    return QianfanError(Code.MESSAGES_STRUCTURE, message)


def _parse_messages(raw: Any) -> tuple[str | None, list[dict]]:
    """Leading system messages become `system`; the rest must alternate user, assistant, …, user."""
    if raw is None:
        raise _bad_messages("messages is required")
    if not isinstance(raw, list):
        raise _bad_messages("messages must be an array")
    if not raw:
        raise _bad_messages("messages can not be empty")
    system_parts: list[str] = []
    conversation: list[tuple[int, str, str]] = []  # (index in the body, role, text)
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad_messages(f"messages[{index}] must be an object")
        role = item.get("role")
        if not isinstance(role, str):
            raise _bad_messages(f"messages[{index}].role must be a string")
        _refuse_unbuilt_role(index, role)
        if role not in ("system", "user", "assistant"):
            raise _bad_messages(f"messages[{index}].role must be system, user or assistant, not {role!r}")
        text = _content_text(index, item.get("content"))
        if role == "system":
            if conversation:
                raise _bad_messages(f"messages[{index}]: system messages must come before the conversation")
            system_parts.append(text)
            continue
        if not text.strip():
            raise out_of_range(f"messages[{index}].content can not be empty")
        conversation.append((index, role, text))
    if not conversation:
        raise _bad_messages("messages must contain a user message")
    if len(conversation) % 2 == 0:
        raise _bad_messages("the user and assistant messages must be an odd number: user, assistant, …, user")
    for position, (index, role, _) in enumerate(conversation):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            raise _bad_messages(f"messages[{index}] must be a {expected} message: user and assistant turns alternate")
    system = "\n\n".join(system_parts) if system_parts else None
    return system, [{"role": role, "content": text} for _, role, text in conversation]


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


class V2Message(BaseModel):
    role: str = "assistant"
    content: str


class V2Delta(BaseModel):
    role: str | None = None  # on the first chunk only
    content: str | None = None  # absent on the last chunk


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


# Absent rather than null when they do not apply.
_OMIT_WHEN_NONE = {"ban_round", "role", "content"}


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if not (v is None and k in _OMIT_WHEN_NONE)}
    if isinstance(value, list):
        return [_prune(v) for v in value]
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
        elif isinstance(event, ChatEnd):
            delta = V2Delta(role="assistant", content="") if first else V2Delta()
            yield chunk([V2ChunkChoice(delta=delta, finish_reason=FINISH_REASONS[event.finish_reason],
                                       **_verdict_fields(event.verdict))])
            if include_usage:
                yield chunk([], event.usage)


async def render_completion(request_id: str, model: str, created: int, events: AsyncIterator[ChatEvent], *,
                            logprobs: bool = False) -> V2Completion:
    """The sync answer: every delta joined. At flag 3 the content must not be shown: it is empty and
    no logprobs are returned."""
    parts: list[str] = []
    entries: list[TokenLogprob] = []
    end: ChatEnd | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
            entries.extend(event.logprobs)
        else:
            end = event
    assert end is not None, "serving ends every answer with a ChatEnd"
    hidden = end.verdict.flag >= 3
    choice = V2Choice(
        message=V2Message(content="" if hidden else "".join(parts)),
        finish_reason=FINISH_REASONS[end.finish_reason], **_verdict_fields(end.verdict),
        logprobs=_logprobs(entries) if logprobs and not hidden else None,
    )
    return V2Completion(id=request_id, created=created, model=model, choices=[choice], usage=V2Usage.of(end.usage))
