"""The v1 surface's answers: Qianfan's chat response and stream chunks (seed-chat-api.txt).

The models fix the field order the seed shows; optional fields (`flag`, `ban_round`, `logprobs`)
are left out when absent. The renderers turn serving's neutral events into them: the stream is cut
into clause-sized chunks, and a sync answer is the same events joined.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import orjson
from pydantic import BaseModel

from qfserve.protocol.events import ChatEnd, ChatEvent, FunctionCall, TextDelta, TokenLogprob, Usage, Verdict
from qfserve.protocol.sentences import SentenceSplitter


class V1Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> "V1Usage":
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   total_tokens=usage.total_tokens)


class V1Logprobs(BaseModel):
    content: list[dict]


class V1FunctionCall(BaseModel):
    """ERNIE's `function_call`: `arguments` is JSON text."""

    name: str
    arguments: str
    thoughts: str

    @classmethod
    def of(cls, call: FunctionCall | None) -> "V1FunctionCall | None":
        return None if call is None else cls(name=call.name, arguments=call.arguments, thoughts=call.thoughts)


class V1Chunk(BaseModel):
    """One `data: {…}` event of a v1 stream."""

    id: str
    object: str = "chat.completion"
    created: int
    sentence_id: int
    is_end: bool
    is_truncated: bool
    result: str
    need_clear_history: bool
    flag: int | None = None
    ban_round: int | None = None
    function_call: V1FunctionCall | None = None
    finish_reason: str | None = None
    logprobs: V1Logprobs | None = None
    usage: V1Usage


class V1Completion(BaseModel):
    """A sync v1 answer."""

    id: str
    object: str = "chat.completion"
    created: int
    result: str
    is_truncated: bool
    need_clear_history: bool
    flag: int | None = None
    ban_round: int | None = None
    function_call: V1FunctionCall | None = None
    finish_reason: str
    logprobs: V1Logprobs | None = None
    usage: V1Usage


def dump(model: BaseModel) -> bytes:
    """Compact one-line JSON, optional fields left out when absent."""
    return orjson.dumps(model.model_dump(exclude_none=True))


def _verdict_fields(verdict: Verdict) -> dict:
    return {
        "need_clear_history": verdict.need_clear_history,
        "flag": verdict.flag or None,
        "ban_round": verdict.ban_round,
    }


def _logprobs(entries: list[TokenLogprob], wanted: bool) -> V1Logprobs | None:
    return V1Logprobs(content=[e.as_dict() for e in entries]) if wanted else None


async def render_stream(request_id: str, events: AsyncIterator[ChatEvent], *,
                        logprobs: bool = False) -> AsyncIterator[V1Chunk]:
    """Clause-sized chunks with running usage, then one `is_end` chunk with the totals.

    Logprobs ride with the chunk that carries their text: the splitter holds text back, so each
    entry waits until the chunks sent cover the delta it came with. A function call arrives whole
    in the `is_end` chunk, with an empty `result`."""
    splitter = SentenceSplitter()
    sentence_id = 0
    received = 0  # characters of delta text so far
    sent = 0  # characters of chunk text so far
    pending: list[tuple[int, TokenLogprob]] = []  # (end offset of its delta, entry)

    def take(upto: int) -> list[TokenLogprob]:
        nonlocal pending
        ready = [entry for end, entry in pending if end <= upto]
        pending = [(end, entry) for end, entry in pending if end > upto]
        return ready

    call: FunctionCall | None = None

    def chunk(text: str, usage: Usage, verdict: Verdict, *, end: ChatEnd | None = None) -> V1Chunk:
        nonlocal sentence_id, sent
        sent += len(text)
        made = V1Chunk(
            id=request_id, created=int(time.time()), sentence_id=sentence_id, is_end=end is not None,
            is_truncated=end.truncated if end is not None else False, result=text,
            **_verdict_fields(verdict), function_call=V1FunctionCall.of(call if end is not None else None),
            finish_reason=end.finish_reason if end is not None else None,
            logprobs=_logprobs(take(sent) if end is None else take(received), logprobs),
            usage=V1Usage.of(usage),
        )
        sentence_id += 1
        return made

    async for event in events:
        if isinstance(event, TextDelta):
            received += len(event.text)
            pending.extend((received, entry) for entry in event.logprobs)
            for part in splitter.feed(event.text):
                yield chunk(part, event.usage, event.verdict)
        elif isinstance(event, FunctionCall):
            call = event
        else:
            rest = splitter.flush()
            if rest:
                yield chunk(rest, event.usage, event.verdict)
            yield chunk("", event.usage, event.verdict, end=event)


async def render_completion(request_id: str, created: int, events: AsyncIterator[ChatEvent], *,
                            logprobs: bool = False) -> V1Completion:
    """The sync answer: every delta joined. At flag 3 the content must not be shown at all: the
    result is empty and no logprobs are returned."""
    parts: list[str] = []
    entries: list[TokenLogprob] = []
    end: ChatEnd | None = None
    call: FunctionCall | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
            entries.extend(event.logprobs)
        elif isinstance(event, FunctionCall):
            call = event
        else:
            end = event
    assert end is not None, "serving ends every answer with a ChatEnd"
    hidden = end.verdict.flag >= 3
    return V1Completion(
        id=request_id, created=created, result="" if hidden else "".join(parts),
        is_truncated=end.truncated, **_verdict_fields(end.verdict), function_call=V1FunctionCall.of(call),
        finish_reason=end.finish_reason,
        logprobs=_logprobs(entries, logprobs and not hidden), usage=V1Usage.of(end.usage),
    )
