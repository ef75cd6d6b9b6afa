"""One chat request end to end, between the HTTP layer and the engine (../shared/design.md).

`prepare` does everything that can refuse a request, before any byte of the answer is sent:
service, permission, validation, input moderation, memory recall, prompt, input limits, rate limits.
`stream` then yields wire chunks (dicts); a sync answer is the same stream joined by `complete`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from qfserve import metrics
from qfserve.chat.sentences import SentenceSplitter
from qfserve.engine.base import (
    Engine,
    EngineOverloaded,
    EngineUnavailable,
    FinishEvent,
    GenerateRequest,
    SamplingParams,
    TokenEvent,
)
from qfserve.engine.prompt import ChatPrompt
from qfserve.limits.base import AppQuota, Limiter, Reservation, limit_key
from qfserve.protocol.chat import ChatRequest, parse_chat_request
from qfserve.protocol.errors import Code, QianfanError
from qfserve.services.adapters import adapter_gguf
from qfserve.services.engines import EngineRegistry
from qfserve.services.profiles import get_profile
from qfserve.store import apps as app_store
from qfserve.store import services as service_store
from qfserve.store.apps import App
from qfserve.store.db import Store
from qfserve.store.services import Service

log = logging.getLogger(__name__)

_FINISH_REASONS = {"length": "length", "cancelled": "normal", "error": "normal"}


@dataclass(frozen=True)
class SafetyVerdict:
    """What the wire reports of moderation: `flag`, `need_clear_history`, `ban_round`."""

    level: int = 0
    ban_round: int | None = None


@dataclass
class PreparedChat:
    request_id: str
    created: int
    app: App
    service: Service
    request: ChatRequest
    engine: Engine | None
    prompt_tokens: list[int]
    params: SamplingParams
    reservation: Reservation
    adapter: str | None = None
    input_verdict: SafetyVerdict = SafetyVerdict()
    started: float = field(default_factory=time.monotonic)

    @property
    def headers(self) -> dict[str, str]:
        return {"Statement": "AI-generated", **self.reservation.budget.headers()}


def _sampling_params(request: ChatRequest, max_tokens: int) -> SamplingParams:
    min_tokens = min(request.min_output_tokens or 0, max_tokens)
    return SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        repeat_penalty=request.penalty_score,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop=request.stop,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs or 0,
    )


class ChatServing:
    def __init__(
        self,
        *,
        store: Store,
        engines: EngineRegistry,
        limiter: Limiter,
        ctx_per_seq: int,
        moderator: Any = None,
        memory: Any = None,
        usage: Any = None,
    ):
        self.store = store
        self.engines = engines
        self.limiter = limiter
        self.ctx_per_seq = ctx_per_seq
        self.moderator = moderator
        self.memory = memory
        self.usage = usage  # UsageRecorder: requests and tokens per app, service and day
        self._background: set[asyncio.Task] = set()

    # ---- before the answer -------------------------------------------------------------------

    async def prepare(self, app: App, api_path: str, body: Any, request_id: str) -> PreparedChat:
        service = await asyncio.to_thread(service_store.get_service, self.store, api_path)
        if service is None:
            raise QianfanError(Code.API_NOT_EXIST)
        if not await asyncio.to_thread(app_store.may_call, self.store, app, api_path):
            raise QianfanError(Code.NO_PERMISSION)
        request = parse_chat_request(body)
        profile = get_profile(service.profile)
        if request.input_chars() > profile.max_input_chars:
            raise QianfanError(Code.INPUT_CHARS_TOO_LONG, f"the max input characters is {profile.max_input_chars}")

        verdict = await self._moderate_input(request, service)
        if verdict.level >= 3:
            # The model is not called; the request still counts against RPM.
            reservation = await self.limiter.admit_request(limit_key(api_path, app.id), service.rpm, service.tpm, 0,
                                                           AppQuota(app.id, app.qps, app.daily_requests))
            return PreparedChat(request_id, int(time.time()), app, service, request, None, [], SamplingParams(),
                                reservation, input_verdict=verdict)

        system = await self._system_prompt(app, service, request)
        engine, prompt = await self._engine(service)
        messages = [{"role": "user" if m.role == "function" else m.role, "content": m.content} for m in request.messages]
        prompt_ids = await asyncio.to_thread(_render_and_tokenize, prompt, messages, system)
        if len(prompt_ids) > profile.max_input_tokens or len(prompt_ids) >= self.ctx_per_seq - 1:
            raise QianfanError(Code.PROMPT_TOKENS_TOO_LONG)
        # The answer may not outgrow the sequence's KV cells: cut it there (is_truncated tells).
        max_tokens = min(request.max_output_tokens, profile.max_output_tokens, self.ctx_per_seq - len(prompt_ids))
        adapter = self._adapter_path(service)
        reservation = await self.limiter.admit_request(limit_key(api_path, app.id), service.rpm, service.tpm,
                                                       len(prompt_ids), AppQuota(app.id, app.qps, app.daily_requests))
        return PreparedChat(
            request_id, int(time.time()), app, service, request, engine, prompt_ids,
            _sampling_params(request, max_tokens), reservation, adapter=adapter, input_verdict=verdict,
        )

    async def _moderate_input(self, request: ChatRequest, service: Service) -> SafetyVerdict:
        if self.moderator is None or service.safety == "off":
            return SafetyVerdict()
        check = functools.partial(self.moderator.check_input, [(m.role, m.content) for m in request.messages],
                                  request.system, request.user_setting, policy=service.safety)
        # About 0.07 µs a character: only long inputs are worth a thread hop.
        found = await asyncio.to_thread(check) if request.input_chars() > 20000 else check()
        return SafetyVerdict(found.level, found.ban_round)

    async def _system_prompt(self, app: App, service: Service, request: ChatRequest) -> str | None:
        if self.memory is None or not request.enable_user_memory or not request.user_id:
            return request.system
        recalled = await self.memory.recall(app.id, service.api_path, request.user_id,
                                            request.messages[-1].content, request.user_memory_level)
        block = self.memory.prompt_block(recalled, request.user_setting)
        if not block:
            return request.system
        return f"{request.system}\n\n{block}" if request.system else block

    async def _engine(self, service: Service) -> tuple[Engine, ChatPrompt]:
        try:
            return await self.engines.get(service.model)
        except FileNotFoundError as exc:
            log.error("service %s: %s", service.api_path, exc)
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from None

    def _adapter_path(self, service: Service) -> str | None:
        if not service.adapter:
            return None
        try:
            return adapter_gguf(service.adapter)
        except (OSError, ValueError) as exc:
            log.error("service %s: adapter unusable: %s", service.api_path, exc)
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from None

    # ---- the answer --------------------------------------------------------------------------

    def _chunk(self, prepared: PreparedChat, sentence_id: int, text: str, *, is_end: bool,
               is_truncated: bool, completion_tokens: int, verdict: SafetyVerdict,
               finish_reason: str | None = None, logprobs: list | None = None) -> dict:
        prompt_tokens = len(prepared.prompt_tokens)
        chunk = {
            "id": prepared.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "sentence_id": sentence_id,
            "is_end": is_end,
            "is_truncated": is_truncated,
            "result": text,
            "need_clear_history": verdict.level >= 2,
        }
        if verdict.level > 0:
            chunk["flag"] = verdict.level
        if verdict.level >= 2 and verdict.ban_round is not None:
            chunk["ban_round"] = verdict.ban_round
        if finish_reason is not None:
            chunk["finish_reason"] = finish_reason
        if logprobs is not None:
            chunk["logprobs"] = {"content": logprobs}
        chunk["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return chunk

    async def stream(self, prepared: PreparedChat) -> AsyncIterator[dict]:
        """Wire chunks: clause-sized pieces with running usage, then one `is_end` chunk."""
        verdict = prepared.input_verdict
        if prepared.engine is None:  # blocked at input (flag 3)
            metrics.REQUESTS.labels(prepared.service.api_path, "content_filter").inc()
            if self.usage is not None:
                self.usage.record(prepared.app.id, prepared.service.api_path, 0, 0)
            yield self._chunk(prepared, 0, "", is_end=True, is_truncated=False, completion_tokens=0,
                              verdict=verdict, finish_reason="content_filter")
            return

        service = prepared.service.api_path
        splitter = SentenceSplitter()
        output_filter = None
        if self.moderator is not None and prepared.service.safety != "off":
            output_filter = self.moderator.output_filter(policy=prepared.service.safety)
        want_logprobs = prepared.params.logprobs
        pending_logprobs: list[dict] = []
        completion_tokens = 0
        sentence_id = 0
        answer: list[str] = []
        finish: FinishEvent | None = None
        finish_reason = "normal"
        first_token_at = last_token_at = None
        # Labelled children once per request: `.labels()` per token is a locked dict lookup.
        ttft_metric, itl_metric = metrics.TTFT.labels(service), metrics.ITL.labels(service)
        events = _engine_events(prepared.engine, GenerateRequest(
            prepared.request_id, prepared.prompt_tokens, prepared.params, adapter=prepared.adapter, service=service))
        def pieces(text: str, *, final: bool = False) -> list[dict]:
            nonlocal sentence_id
            parts = splitter.feed(text)
            if final and (rest := splitter.flush()):
                parts.append(rest)
            chunks = []
            for part in parts:
                chunks.append(self._chunk(prepared, sentence_id, part, is_end=False, is_truncated=False,
                                          completion_tokens=completion_tokens, verdict=verdict,
                                          logprobs=_take(pending_logprobs) if want_logprobs else None))
                sentence_id += 1
            return chunks

        try:
            async for event in events:
                if isinstance(event, TokenEvent):
                    now = time.monotonic()
                    if first_token_at is None:
                        first_token_at = now
                        ttft_metric.observe(now - prepared.started)
                    else:
                        itl_metric.observe(now - last_token_at)
                    last_token_at = now
                    completion_tokens += 1
                    if want_logprobs:
                        pending_logprobs.append(_logprob_entry(event))
                else:
                    finish = event
                text = event.text
                if output_filter is not None and text:
                    # The filter passes only text that is safe to show (masked at level 1).
                    text, stop_verdict = output_filter.feed(text)
                    if output_filter.verdict.level == 1 and verdict.level == 0:
                        verdict = SafetyVerdict(1)  # a masked term: the chunks from here on carry flag 1
                    if stop_verdict is not None:
                        answer.append(text)
                        for chunk in pieces(text, final=True):
                            yield chunk
                        verdict = _max_verdict(verdict, SafetyVerdict(stop_verdict.level, stop_verdict.ban_round))
                        finish_reason = "content_filter"
                        break  # closing the engine's events stops the generation
                answer.append(text)
                for chunk in pieces(text):
                    yield chunk
                if finish is not None:
                    break
            if finish is not None and finish.reason == "error":
                log.error("engine error on %s: %s", prepared.request_id, finish.error)
                # A dead worker is the retryable "backend down"; anything else is an internal error.
                raise QianfanError(Code.INTERNAL if prepared.engine.ready else Code.SERVICE_UNAVAILABLE)
            if finish_reason != "content_filter":
                rest = ""
                if output_filter is not None:
                    rest, end_verdict = output_filter.finish()
                    verdict = _max_verdict(verdict, SafetyVerdict(end_verdict.level, end_verdict.ban_round))
                    if end_verdict.level >= 2:
                        finish_reason = "content_filter"
                answer.append(rest)
                for chunk in pieces(rest, final=True):
                    yield chunk
            if finish is not None:
                completion_tokens = finish.completion_tokens
                metrics.QUEUE_TIME.labels(service).observe(finish.queue_seconds)
                if finish_reason != "content_filter":
                    finish_reason = "stop" if finish.matched_stop else _FINISH_REASONS.get(finish.reason, "normal")
            truncated = finish is not None and finish.reason == "length"
            yield self._chunk(prepared, sentence_id, "", is_end=True, is_truncated=truncated,
                              completion_tokens=completion_tokens, verdict=verdict, finish_reason=finish_reason,
                              logprobs=_take(pending_logprobs) if want_logprobs else None)
            metrics.REQUESTS.labels(service, finish_reason).inc()
            self._after_answer(prepared, "".join(answer), verdict)
        finally:
            await events.aclose()
            metrics.PROMPT_TOKENS.labels(service).inc(len(prepared.prompt_tokens))
            metrics.GENERATED_TOKENS.labels(service).inc(completion_tokens)
            metrics.E2E.labels(service).observe(time.monotonic() - prepared.started)
            # Tokens of a cancelled answer still count against TPM.
            self._spawn(prepared.reservation.settle(len(prepared.prompt_tokens) + completion_tokens))
            if self.usage is not None:
                self.usage.record(prepared.app.id, service, len(prepared.prompt_tokens), completion_tokens)

    async def complete(self, prepared: PreparedChat) -> dict:
        """The sync answer: the stream joined into one body."""
        parts: list[str] = []
        logprobs: list[dict] = []
        last: dict = {}
        async for chunk in self.stream(prepared):
            parts.append(chunk["result"])
            logprobs.extend(chunk.get("logprobs", {}).get("content", []))
            last = chunk
        must_hide = last.get("flag", 0) >= 3  # flag 3: the content must not be shown at all
        body = {
            "id": prepared.request_id,
            "object": "chat.completion",
            "created": prepared.created,
            "result": "" if must_hide else "".join(parts),
            "is_truncated": last["is_truncated"],
            "need_clear_history": last["need_clear_history"],
        }
        for key in ("flag", "ban_round"):
            if key in last:
                body[key] = last[key]
        body["finish_reason"] = last.get("finish_reason", "normal")
        if prepared.params.logprobs:
            body["logprobs"] = {"content": logprobs}
        body["usage"] = last["usage"]
        return body

    # ---- after the answer --------------------------------------------------------------------

    def _after_answer(self, prepared: PreparedChat, answer: str, verdict: SafetyVerdict) -> None:
        request = prepared.request
        if (self.memory is None or not request.enable_user_memory or not request.user_id
                or request.user_memory_extract_level <= 0):
            return
        generate = None
        if request.user_memory_extract_level >= 2:
            generate = self._generator_for(prepared)
        self._spawn(self.memory.extract(
            app_id=prepared.app.id, api_path=prepared.service.api_path, user_id=request.user_id,
            request_id=prepared.request_id, messages=[(m.role, m.content) for m in request.messages],
            answer=answer, level=request.user_memory_extract_level, safety_level=verdict.level,
            generate=generate,
        ))

    def _generator_for(self, prepared: PreparedChat):
        """An async `messages -> text` callable on the service's own model, for level-2 extraction."""
        engine = prepared.engine

        async def generate(messages: list[dict]) -> str:
            _, prompt = await self.engines.get(prepared.service.model)
            ids = await asyncio.to_thread(_render_and_tokenize, prompt, messages, None)
            params = SamplingParams(temperature=0.1, top_p=0.5, max_tokens=256, frequency_penalty=0.0)
            parts = []
            async for event in engine.generate(GenerateRequest(prepared.request_id + "-mem", ids, params,
                                                               adapter=prepared.adapter)):
                parts.append(event.text)
            return "".join(parts)

        return generate

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    async def drain(self) -> None:
        """Wait for background work (limit settling, memory extraction) at shutdown."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


async def _engine_events(engine: Engine, request: GenerateRequest) -> AsyncIterator:
    """The engine's events, with its refusals turned into the retryable wire codes."""
    events = None
    try:
        events = engine.generate(request)
        async for event in events:
            yield event
    except EngineOverloaded:
        raise QianfanError(Code.OVERLOADED) from None
    except EngineUnavailable:
        raise QianfanError(Code.SERVICE_UNAVAILABLE) from None
    finally:
        if events is not None:
            await events.aclose()  # cancels the sequence if the consumer stopped early


def _render_and_tokenize(prompt: ChatPrompt, messages: list[dict], system: str | None) -> list[int]:
    return prompt.tokenize(prompt.render(messages, system))


def _logprob_entry(event: TokenEvent) -> dict:
    return {
        "token": event.token_text,
        "logprob": event.logprob,
        "top_logprobs": [{"token": t.token, "logprob": t.logprob} for t in event.top_logprobs],
    }


def _take(items: list) -> list:
    taken = list(items)
    items.clear()
    return taken


def _max_verdict(a: SafetyVerdict, b: SafetyVerdict) -> SafetyVerdict:
    return a if a.level >= b.level else b


__all__ = ["ChatServing", "PreparedChat", "EngineOverloaded", "EngineUnavailable"]
