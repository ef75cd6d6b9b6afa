"""RemoteEngine: one model (a served base model or a LoRA name) on a pool of OpenAI-compatible replicas.

The prompt is counted on a replica with the model's own tokenizer and chat template before the
request is admitted, and exactly those tokens are generated from (see dialect.py). Generation is
always streamed upstream; each streamed piece becomes the same TokenEvents the embedded engine
yields, so serving's sentence splitter, output moderation and logprob gate treat both alike.
Closing the event stream closes the upstream connection, and the replica aborts the request.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import AsyncIterator

import httpx
import orjson

from qfserve.engine.base import (
    AdmissionTicket,
    Engine,
    EngineEvent,
    EnginePromptTooLong,
    EngineUnavailable,
    FinishEvent,
    GenerateRequest,
    TokenEvent,
    Tools,
    TopLogprob,
)
from qfserve.engine.openai_compat.adapters import AdapterRefused, RemoteAdapter, ensure_adapter
from qfserve.engine.openai_compat.dialect import (
    LLAMA_CPP,
    ChatTemplate,
    completion_body,
    error_message,
    is_context_error,
)
from qfserve.engine.openai_compat.replicas import Replica, ReplicaFailure, ReplicaPool
from qfserve.engine.openai_compat.tools import (
    ChatStreamReader,
    call_as_json_answer,
    chat_body,
    needs_chat,
    openai_tools,
    openai_turns,
)

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048  # llama-cpp-python's default n_ctx, when nothing better is known
_PROMPT_TEXTS = 512  # rendered prompts kept for servers that take text (llama-cpp-python)
_COUNTED = 512  # conversations whose token ids are kept (long prompts: tens of MB at most)


class RemoteEngine(Engine):
    renders_tools = True  # passed through to the replica's chat endpoint (tools.py)

    def __init__(self, pool: ReplicaPool, model: str, *, adapter: RemoteAdapter | None = None,
                 template: ChatTemplate | None = None, context_length: int | None = None):
        self.pool = pool
        self.model = model
        self.adapter = adapter
        self.template = template
        self._configured_context = context_length
        self._reported_context: int | None = None
        self._adapter_epochs: dict[str, int] = {}  # replica url -> epoch the adapter was ensured in
        self._prompt_texts: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._counted: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()
        self._chat_turns: OrderedDict[tuple[int, ...], list[dict]] = OrderedDict()  # counted ids -> OpenAI turns

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.pool.start()

    async def close(self) -> None:
        """The pool is shared by every model on it; the registry closes it."""

    @property
    def ready(self) -> bool:
        return bool(self.pool.admitted())

    def check_admission(self, max_tokens: int | None = None, ticket: AdmissionTicket | None = None) -> None:
        if not self.pool.admitted():
            raise EngineUnavailable(f"engine {self.pool.name}: no healthy replica")

    def stats(self) -> dict:
        return self.pool.stats()

    @property
    def context_length(self) -> int:
        known = [n for n in (self._configured_context, self._reported_context) if n]
        return min(known) if known else DEFAULT_CONTEXT

    # ---- counting ----------------------------------------------------------------------------

    async def chat_tokens(self, messages: list[dict], system: str | None, tools: Tools | None = None) -> list[int]:
        # A conversation always tokenizes the same on one model: repeated ones skip the round trip
        # (the cache goes with this engine, which a changed pool replaces).
        turns = openai_turns(messages, system)
        offered = openai_tools(tools) if tools is not None else None
        key = orjson.dumps([turns, offered])
        cached = self._counted.get(key)
        if cached is not None:
            self._counted.move_to_end(key)
            self._keep_turns(cached, turns)
            return list(cached)
        dialect = await self.pool.dialect()
        if dialect == LLAMA_CPP:
            ids = await self._text_tokens(turns[1:] if system is not None else turns, system)
        else:
            body: dict = {"model": self.model, "messages": turns, "add_generation_prompt": True}
            if offered is not None:
                body["tools"] = offered  # the template renders them, as chat completions will
            payload = await self._call("/tokenize", body)
            if payload.get("max_model_len"):
                self._reported_context = int(payload["max_model_len"])
            ids = _token_list(payload, "tokens", self.pool.name)
        self._counted[key] = tuple(ids)
        while len(self._counted) > _COUNTED:
            self._counted.popitem(last=False)
        self._keep_turns(tuple(ids), turns)
        return ids

    def _keep_turns(self, ids: tuple[int, ...], turns: list[dict]) -> None:
        """The turns behind counted ids, for requests that go through the chat endpoint."""
        self._chat_turns[ids] = turns
        self._chat_turns.move_to_end(ids)
        while len(self._chat_turns) > _COUNTED:
            self._chat_turns.popitem(last=False)

    async def _text_tokens(self, messages: list[dict[str, str]], system: str | None) -> list[int]:
        if self.template is None:
            raise EngineUnavailable(
                f"engine {self.pool.name}: the server cannot count chat messages; "
                "add the engine with --chat-template MODEL.gguf")
        text = self.template.render(messages, system)
        payload = await self._call("/extras/tokenize", {"model": self.model, "input": text})
        ids = _token_list(payload, "tokens", self.pool.name)
        key = tuple(ids)
        self._prompt_texts[key] = text
        self._prompt_texts.move_to_end(key)
        while len(self._prompt_texts) > _PROMPT_TEXTS:
            self._prompt_texts.popitem(last=False)
        return ids

    async def _prompt_text(self, ids: list[int]) -> str:
        text = self._prompt_texts.get(tuple(ids))
        if text is not None:
            return text
        payload = await self._call("/extras/detokenize", {"model": self.model, "tokens": ids})
        if not isinstance(payload.get("text"), str):
            raise EngineUnavailable(f"engine {self.pool.name}: detokenize answered without text")
        return payload["text"]

    async def _call(self, path: str, body: dict) -> dict:
        """A JSON call on the least busy replica; a replica that fails is ejected and one other tried."""
        tried: list[Replica] = []
        while (replica := self.pool.pick(tried)) is not None:
            try:
                await self._ensure_adapter(replica)
                with self.pool.in_flight(replica):
                    status, payload = await self.pool.call_json(replica, "POST", path, body)
            except ReplicaFailure as failure:
                log.warning("engine %s: %s", self.pool.name, failure)
                tried.append(replica)
                if len(tried) >= 2:
                    break
                continue
            if status == 200 and isinstance(payload, dict):
                self.pool.succeeded(replica)
                return payload
            if is_context_error(status, payload):
                raise EnginePromptTooLong(error_message(payload))
            log.error("engine %s: %s %s answered HTTP %s: %s", self.pool.name, replica.url, path, status,
                      error_message(payload))
            raise EngineUnavailable(f"{replica.url}{path}: HTTP {status}")
        raise EngineUnavailable(f"engine {self.pool.name}: no healthy replica")

    async def _ensure_adapter(self, replica: Replica) -> None:
        if self.adapter is None or self._adapter_epochs.get(replica.url) == replica.epoch:
            return
        try:
            how = await ensure_adapter(self.pool, replica, self.adapter)
        except AdapterRefused as refused:
            log.error("engine %s: %s", self.pool.name, refused)
            raise EngineUnavailable(str(refused)) from None
        log.info("engine %s: adapter %s %s on %s", self.pool.name, self.adapter.name, how, replica.url)
        self._adapter_epochs[replica.url] = replica.epoch

    # ---- generation --------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[EngineEvent]:
        dialect = await self.pool.dialect()
        if needs_chat(request):  # tools or response_format: the replica's own tool machinery
            turns = self._chat_turns.get(tuple(request.prompt_tokens))
            if turns is None:
                raise EngineUnavailable(f"engine {self.pool.name}: request {request.request_id} was not counted here")
            body = orjson.dumps(chat_body(dialect, self.model, request, turns))
            path = "/v1/chat/completions"
        else:
            prompt_text = await self._prompt_text(request.prompt_tokens) if dialect == LLAMA_CPP else None
            body = orjson.dumps(completion_body(dialect, self.model, request, prompt_text))
            path = "/v1/completions"
        tried: list[Replica] = []
        while True:
            replica = self.pool.pick(tried)
            if replica is None:
                raise EngineUnavailable(f"engine {self.pool.name}: no healthy replica")
            try:
                await self._ensure_adapter(replica)
                async for event in self._stream(replica, path, body, request, dialect):
                    yield event
                return
            except ReplicaFailure as failure:
                log.warning("engine %s: request %s: %s", self.pool.name, request.request_id, failure)
                tried.append(replica)
                # Nothing came back yet: try once more on another replica.
                if failure.retryable and len(tried) < 2 and self.pool.pick(tried) is not None:
                    continue
                raise EngineUnavailable(str(failure)) from None

    async def _stream(self, replica: Replica, path: str, body: bytes, request: GenerateRequest,
                      dialect: str) -> AsyncIterator[EngineEvent]:
        pool = self.pool
        with pool.in_flight(replica):
            upstream = pool.client.build_request(
                "POST", f"{replica.url}{path}", content=body,
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
            try:
                response = await pool.client.send(upstream, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise pool._failure(replica, "connect", str(exc) or type(exc).__name__, retryable=True) from None
            except httpx.TimeoutException as exc:
                raise pool._failure(replica, "timeout", type(exc).__name__) from None
            except httpx.HTTPError as exc:  # the connection dropped before any answer
                raise pool._failure(replica, "protocol", str(exc) or type(exc).__name__, retryable=True) from None
            try:
                if response.status_code != 200:
                    await self._refused(replica, response)
                if path == "/v1/chat/completions":
                    reader: _StreamReader = _ChatReader(request, call_as_json_answer(dialect, request))
                else:
                    reader = _StreamReader(request, stops=request.params.stop if dialect == LLAMA_CPP else ())
                try:
                    async for line in response.aiter_lines():
                        events, done = reader.line(line)
                        for event in events:
                            yield event
                        if done:
                            break
                except httpx.TimeoutException:
                    raise pool._failure(replica, "timeout", f"no data for {pool.settings.timeout:g}s") from None
                except httpx.HTTPError as exc:
                    raise pool._failure(replica, "cut", str(exc) or type(exc).__name__) from None
                except _Garbage as garbage:
                    raise pool._failure(replica, "garbage", str(garbage)) from None
                except _UpstreamError as error:
                    if is_context_error(400, error.payload):
                        raise EnginePromptTooLong(error_message(error.payload)) from None
                    raise pool._failure(replica, "upstream_error", error_message(error.payload)) from None
                finish = reader.finish()
                if finish is None:
                    raise pool._failure(replica, "cut", "the stream ended before the answer did")
                pool.succeeded(replica)
                yield finish
            finally:
                await response.aclose()  # before the end: the replica sees the disconnect and aborts

    async def _refused(self, replica: Replica, response: httpx.Response) -> None:
        raw = await response.aread()
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = raw[:300].decode("utf-8", "replace")
        status = response.status_code
        if is_context_error(status, payload):
            raise EnginePromptTooLong(error_message(payload))
        if status >= 500:
            raise self.pool._failure(replica, "status", f"HTTP {status}: {error_message(payload)}", retryable=True)
        log.error("engine %s: %s refused the completion (HTTP %s): %s", self.pool.name, replica.url, status,
                  error_message(payload))
        if status == 404 and self.adapter is not None:
            self._adapter_epochs.pop(replica.url, None)  # forgotten (a restart): register it again next time
        raise EngineUnavailable(f"{replica.url}: HTTP {status}")


class _Garbage(Exception):
    pass


class _UpstreamError(Exception):
    def __init__(self, payload):
        super().__init__(error_message(payload))
        self.payload = payload


class _StreamReader:
    """Server-sent events of `/v1/completions` in, engine events out."""

    def __init__(self, request: GenerateRequest, stops: tuple[str, ...] = ()):
        self.request = request
        self.top_n = request.params.top_logprobs if request.params.logprobs else 0
        self.tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason = None
        self.usage: dict | None = None
        self._matcher = None
        if stops:  # a server that cannot say which stop matched: match them here (dialect.py)
            from qfserve.engine.llamacpp.text import StreamingText  # pure Python, no llama.cpp

            self._matcher = StreamingText(stops)

    def line(self, line: str) -> tuple[list[EngineEvent], bool]:
        """The events one line completes, and whether the stream is over."""
        if not line or line.startswith(":"):
            return [], False
        if not line.startswith("data:"):
            if line.split(":", 1)[0] in ("event", "id", "retry"):
                return [], False
            raise _Garbage(f"not a server-sent event: {line[:80]!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            return [], True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _Garbage(f"not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise _Garbage(f"not a completion chunk: {data[:80]!r}")
        if "error" in chunk and not chunk.get("choices"):
            raise _UpstreamError(chunk)
        return self.chunk(chunk)

    def chunk(self, chunk: dict) -> tuple[list[EngineEvent], bool]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            return [], False
        choice = choices[0]
        if not isinstance(choice, dict):
            raise _Garbage("a choice that is not an object")
        events = self._tokens(choice)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.stop_reason = choice.get("stop_reason")
        if self._matcher is not None and self._matcher.stopped:
            self.finish_reason, self.stop_reason = "stop", self._matcher.matched_stop
            return events, True
        return events, False

    def _tokens(self, choice: dict) -> list[EngineEvent]:
        text = choice.get("text") or ""
        ids = choice.get("token_ids")
        logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
        pieces = (logprobs or {}).get("tokens") or []
        if isinstance(ids, list):
            count = len(ids)
        elif pieces:
            count = len(pieces)
        else:
            count = 1 if text else 0
        if self._matcher is not None and text:
            text = self._matcher.push(text.encode("utf-8"))
        if count == 0:
            return [TokenEvent(-1, text)] if text else []
        self.tokens += count
        events = []
        for i in range(count):
            token_id = ids[i] if isinstance(ids, list) and isinstance(ids[i], int) else -1
            # The piece's text goes with its last token; the ones before share that span.
            shown = text if i == count - 1 else ""
            if logprobs is None:
                events.append(TokenEvent(token_id, shown))
                continue
            events.append(TokenEvent(token_id, shown, *self._logprob(logprobs, i)))
        return events

    def _logprob(self, logprobs: dict, i: int) -> tuple[float | None, tuple[TopLogprob, ...], str]:
        def at(name):
            values = logprobs.get(name) or []
            return values[i] if i < len(values) else None

        token, value, top = at("tokens") or "", at("token_logprobs"), at("top_logprobs") or {}
        alternatives = sorted(top.items(), key=lambda kv: kv[1], reverse=True)[: self.top_n] if top else []
        return (float(value) if value is not None else None,
                tuple(TopLogprob(t, float(lp)) for t, lp in alternatives), token)

    def finish(self) -> FinishEvent | None:
        if self.finish_reason is None:
            return None
        rest = self._matcher.flush() if self._matcher is not None else ""
        prompt_tokens = len(self.request.prompt_tokens)
        completion_tokens = self.tokens
        if self.usage:
            completion_tokens = int(self.usage.get("completion_tokens", completion_tokens))
            upstream_prompt = self.usage.get("prompt_tokens")
            if upstream_prompt is not None and int(upstream_prompt) != prompt_tokens:
                log.warning("request %s: the replica ran %s prompt tokens, %s were counted",
                            self.request.request_id, upstream_prompt, prompt_tokens)
        if self.finish_reason == "length":
            reason = "length"
        elif self.finish_reason in ("stop", "eos"):
            reason = "stop"
        else:  # "abort" and anything unknown: the replica gave up on it
            return FinishEvent("error", prompt_tokens, completion_tokens, rest,
                               error=f"upstream finish_reason {self.finish_reason!r}")
        matched = self.stop_reason if isinstance(self.stop_reason, str) else None
        return FinishEvent(reason, prompt_tokens, completion_tokens, rest, matched_stop=matched)


class _ChatReader(_StreamReader):
    """The same server-sent events, of `/v1/chat/completions` (tools.py reads the chunks)."""

    def __init__(self, request: GenerateRequest, call_from_content: str | None = None):
        super().__init__(request)
        self.chat = ChatStreamReader(request, call_from_content)

    def chunk(self, chunk: dict) -> tuple[list[EngineEvent], bool]:
        return self.chat.chunk(chunk), False

    def finish(self) -> FinishEvent | None:
        return self.chat.finish()


def _token_list(payload: dict, name: str, pool: str) -> list[int]:
    tokens = payload.get(name)
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise EngineUnavailable(f"engine {pool}: tokenize answered without token ids")
    return tokens
