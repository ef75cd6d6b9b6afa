"""One chat request end to end, between a surface (v1, v2) and the engine (../shared/design.md).

`prepare` does everything that can refuse a request, before any byte of the answer is sent:
service, permission, input limits, input moderation, the engine's admission, rate limits, memory
recall, the prompt. `events` then yields the answer as neutral events (`TextDelta`s, then one
`ChatEnd`), already through output moderation; each surface renders them in its own wire.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from qfserve import metrics
from qfserve.chat.logprob_gate import LogprobGate
from qfserve.engine.base import (
    AdmissionTicket,
    Constraint,
    Engine,
    EngineOverloaded,
    EnginePromptTooLong,
    EngineUnavailable,
    FinishEvent,
    FunctionCallOut,
    FunctionDef,
    GenerateRequest,
    SamplingParams,
    TokenEvent,
    Tools,
)
from qfserve.limits.base import AppQuota, Limiter, Reservation, limit_key
from qfserve.memory import prompt as memory_prompt
from qfserve.protocol.chat import ChatRequest
from qfserve.protocol.errors import Code, QianfanError, out_of_range
from qfserve.protocol.events import (
    SAFE,
    ChatEnd,
    ChatEvent,
    FunctionCall,
    TextDelta,
    TokenLogprob,
    Usage,
    Verdict,
)
from qfserve.protocol.functions import (
    MSG_FUNCTION_UNSUPPORTED,
    MSG_FUNCTIONS_NOT_SERVED,
    MSG_RESPONSE_FORMAT_UNSUPPORTED,
)
from qfserve.protocol.ids import call_id
from qfserve.services.adapters import trained_with_default_system
from qfserve.services.engines import EngineRegistry
from qfserve.services.profiles import get_profile
from qfserve.store import apps as app_store
from qfserve.store import services as service_store
from qfserve.store.apps import App
from qfserve.store.db import Store
from qfserve.store.services import Service

log = logging.getLogger(__name__)

# The engine's finish reasons in the wire's words; `stop` is refined by whether a stop string matched.
_FINISH_REASONS = {"length": "length", "cancelled": "normal", "error": "normal", "stop": "normal"}

# Level-2 memory extraction runs a second, background generation on the service's model. It is
# capped, charged to the request's TPM, and queued behind live requests.
EXTRACTION_MAX_TOKENS = 256
BACKGROUND_PRIORITY = 1


@dataclass
class PreparedChat:
    request_id: str
    created: int
    app: App
    service: Service
    request: ChatRequest
    engine: Engine | None  # None: blocked at input (flag 3), the model is not called
    prompt_tokens: list[int]
    params: SamplingParams
    reservation: Reservation
    adapter: str | None = None
    input_verdict: Verdict = SAFE
    tools: Tools | None = None  # functions the answer may call
    started: float = field(default_factory=time.monotonic)
    extra_tokens: int = 0  # engine tokens spent after the answer (memory extraction), charged to TPM

    @property
    def headers(self) -> dict[str, str]:
        return {"Statement": "AI-generated", **self.reservation.budget.headers()}


def _sampling_params(request: ChatRequest, service: Service, max_tokens: int) -> SamplingParams:
    min_tokens = min(request.min_output_tokens or 0, max_tokens)
    defaults = SamplingParams()
    return SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=_service_setting(service, "top_k", defaults.top_k),
        min_p=_service_setting(service, "min_p", defaults.min_p),
        repeat_penalty=request.penalty_score,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop=request.stop,
        seed=request.seed,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs or 0,
        constraint=_response_constraint(request),
    )


def _tools(request: ChatRequest) -> Tools | None:
    """The functions offered, in engine terms; None when there are none or tool_choice is `none`."""
    choice = request.tool_choice
    if not request.functions or (choice is not None and choice.mode == "none"):
        return None
    functions = tuple(
        FunctionDef(f.name, f.description, json.dumps(f.parameters, ensure_ascii=False),
                    tuple(list(exchange) for exchange in f.examples))
        for f in request.functions
    )
    return Tools(functions, choice.mode if choice else "auto", choice.name if choice else None)


def _response_constraint(request: ChatRequest) -> Constraint | None:
    """v2 `response_format`: JSON output under the same grammar machinery as a call's arguments."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    schema = fmt.json_schema if fmt.type == "json_schema" and fmt.json_schema else {"type": "object"}
    return Constraint(json.dumps(schema, ensure_ascii=False))


def _service_setting(service: Service, name: str, default):
    value = getattr(service, name, None)  # per-service sampling defaults, where the service sets them
    return default if value is None else value


class ChatServing:
    def __init__(
        self,
        *,
        store: Store,
        engines: EngineRegistry,
        limiter: Limiter,
        moderator: Any = None,
        memory: Any = None,
        usage: Any = None,
    ):
        self.store = store
        self.engines = engines
        self.limiter = limiter
        self.moderator = moderator
        self.memory = memory
        self.usage = usage  # UsageRecorder: requests and tokens per app, service and day
        self._background: set[asyncio.Task] = set()

    # ---- before the answer -------------------------------------------------------------------

    async def service_for(self, app: App, api_path: str) -> Service:
        """The published service at `api_path`, if this app may call it (checked before the body)."""
        def look_up() -> tuple[Service | None, bool]:  # one trip (on PostgreSQL, through the thread pool)
            found = service_store.get_service(self.store, api_path)
            return found, found is not None and app_store.may_call(self.store, app, api_path)

        service, allowed = await self.store.read(look_up)
        if service is None:
            raise QianfanError(Code.API_NOT_EXIST)
        if not allowed:
            raise QianfanError(Code.NO_PERMISSION)
        return service

    def reserve(self, api_path: str) -> AdmissionTicket | None:
        """At the door, before authentication: 336100 at once when the engine that served `api_path`
        last could not start a request arriving now in time; else the place it holds for this one
        (None when the path's engine is not known yet, or predicts no wait)."""
        engine = self.engines.engine_for_path(api_path)
        if engine is None:
            return None
        try:
            return engine.reserve()
        except EngineOverloaded:
            raise QianfanError(Code.OVERLOADED) from None
        except EngineUnavailable:
            return None  # the route answers it, after authentication

    async def prepare(self, app: App, service: Service, request: ChatRequest, request_id: str,
                      ticket: AdmissionTicket | None = None) -> PreparedChat:
        api_path = service.api_path
        profile = get_profile(service.profile)
        if request.input_chars() > profile.max_input_chars:
            raise QianfanError(Code.INPUT_CHARS_TOO_LONG, f"the max input characters is {profile.max_input_chars}")
        key = limit_key(api_path, app.id)

        verdict = await self._moderate_input(request, service)
        quota = AppQuota(app.id, app.qps, app.daily_requests)
        if verdict.input_level >= 3:
            # The model is not called; the request still counts against RPM and the app's quotas.
            reservation = await self.limiter.admit_request(key, service.rpm, service.tpm, 0, quota)
            return PreparedChat(request_id, int(time.time()), app, service, request, None, [], SamplingParams(),
                                reservation, input_verdict=verdict)

        # Cheap refusals first: an app over its RPM, or an engine that could not start the request
        # in time, costs no tokenizing and no memory recall.
        await self.limiter.check_requests(key, service.rpm, service.tpm)
        engine = await self._engine(service)
        try:
            engine.check_admission(request.max_output_tokens, ticket)
        except EngineOverloaded:
            raise QianfanError(Code.OVERLOADED) from None
        except EngineUnavailable:
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from None

        adapter = await self._adapter_path(service)
        tools = _tools(request)
        self._check_structured(engine, tools, request)
        system = await self._system_prompt(app, service, request)
        try:  # a remote engine counts on its replica, and may refuse there
            if getattr(engine, "renders_tools", False):
                messages = [m.as_engine_dict() for m in request.messages]
                prompt_ids = await (engine.chat_tokens(messages, system) if tools is None
                                    else engine.chat_tokens(messages, system, tools))
            else:  # an engine without function calling sees results as user turns, as before
                messages = [{"role": "user" if m.role == "function" else m.role, "content": m.content}
                            for m in request.messages]
                prompt_ids = await engine.chat_tokens(messages, system)
        except EnginePromptTooLong:
            raise QianfanError(Code.PROMPT_TOKENS_TOO_LONG) from None
        except EngineOverloaded:
            raise QianfanError(Code.OVERLOADED) from None
        except EngineUnavailable:
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from None
        context = engine.context_length
        if len(prompt_ids) > profile.max_input_tokens or len(prompt_ids) >= context - 1:
            raise QianfanError(Code.PROMPT_TOKENS_TOO_LONG)
        # The answer may not outgrow the sequence: cut it there (is_truncated tells).
        max_tokens = min(request.max_output_tokens, profile.max_output_tokens, context - len(prompt_ids))
        reservation = await self.limiter.admit_request(key, service.rpm, service.tpm, len(prompt_ids), quota)
        return PreparedChat(
            request_id, int(time.time()), app, service, request, engine, prompt_ids,
            _sampling_params(request, service, max_tokens), reservation, adapter=adapter, input_verdict=verdict,
            tools=tools,
        )

    @staticmethod
    def _check_structured(engine: Engine, tools: Tools | None, request: ChatRequest) -> None:
        """Schemas the engine cannot constrain decoding to are refused before any work."""
        wants = tools is not None or _response_constraint(request) is not None
        if wants and not getattr(engine, "renders_tools", False):
            raise out_of_range(MSG_FUNCTIONS_NOT_SERVED)
        try:
            if tools is not None:
                engine.check_tools(tools)
        except ValueError as error:
            log.info("functions refused: %s", error)
            raise out_of_range(MSG_FUNCTION_UNSUPPORTED) from None
        constraint = _response_constraint(request)
        try:
            if constraint is not None:
                engine.check_constraint(constraint)
        except ValueError as error:
            log.info("response_format refused: %s", error)
            raise out_of_range(MSG_RESPONSE_FORMAT_UNSUPPORTED) from None

    async def _moderate_input(self, request: ChatRequest, service: Service) -> Verdict:
        if self.moderator is None or service.safety == "off":
            return SAFE
        check = functools.partial(self.moderator.check_input, [(m.role, m.content) for m in request.messages],
                                  request.system, request.user_setting, policy=service.safety)
        # About 0.07 µs a character: only long inputs are worth a thread hop.
        found = await asyncio.to_thread(check) if request.input_chars() > 20000 else check()
        return Verdict(found.level, found.ban_round)

    async def _system_prompt(self, app: App, service: Service, request: ChatRequest) -> str | None:
        """The caller's `system`, then a delimited block with `user_setting` (whenever given) and
        what is remembered about the user (with `enable_user_memory`)."""
        recalled = []
        if self.memory is not None and request.enable_user_memory and request.user_id:
            recalled = await self.memory.recall(app.id, service.api_path, request.user_id,
                                                request.messages[-1].content, request.user_memory_level)
        if not recalled and not request.user_setting:
            if request.system is None and service.adapter and not trained_with_default_system(service.adapter):
                return ""  # an empty system turn: the template's default persona is not the adapter's
            return request.system
        # The setting is the caller's own input (already within the input limits): it is never cut;
        # remembered facts get the memory block's budget.
        budget = (self.memory.max_block_chars if self.memory is not None else 0) + len(request.user_setting or "") + 64
        block = memory_prompt.render(recalled, request.user_setting, budget)
        if not block:
            return request.system
        return f"{request.system}\n\n{block}" if request.system else block

    async def _engine(self, service: Service) -> Engine:
        try:
            return await self.engines.for_service(service)
        except (FileNotFoundError, ValueError, EngineUnavailable) as exc:
            log.error("service %s: model unusable: %s", service.api_path, exc)
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from None

    async def _adapter_path(self, service: Service) -> str | None:
        """The adapter file to load, if it is still the one pinned at publish (the first check of a
        file hashes it: in a thread)."""
        if not service.adapter:
            return None
        try:
            return await asyncio.to_thread(self.engines.adapter_ref, service)
        except (OSError, ValueError) as exc:
            log.error("service %s: adapter unusable: %s", service.api_path, exc)
            raise QianfanError(Code.SERVICE_UNAVAILABLE) from None

    # ---- the answer --------------------------------------------------------------------------

    async def events(self, prepared: PreparedChat) -> AsyncIterator[ChatEvent]:
        """The answer: text as it passes output moderation, with running usage and verdict, then
        one ChatEnd. Engine failures raise QianfanError (before or between deltas)."""
        verdict = prepared.input_verdict
        prompt_tokens = len(prepared.prompt_tokens)
        if prepared.engine is None:  # blocked at input (flag 3)
            metrics.REQUESTS.labels(prepared.service.api_path, "content_filter").inc()
            self._record_usage(prepared, 0, 0)
            yield ChatEnd("content_filter", Usage(prompt_tokens, 0), verdict)
            self._spawn(prepared.reservation.settle(0))
            return

        service = prepared.service.api_path
        output_filter = None
        if self.moderator is not None and prepared.service.safety != "off":
            output_filter = self.moderator.output_filter(policy=prepared.service.safety)
        gate = LogprobGate(output_filter) if prepared.params.logprobs else None
        completion_tokens = 0
        answer: list[str] = []
        finish: FinishEvent | None = None
        finish_reason = None  # set by moderation; otherwise from the engine's finish
        first_token_at = last_token_at = None
        # Labelled children once per request: `.labels()` per token is a locked dict lookup.
        ttft_metric, itl_metric = metrics.TTFT.labels(service), metrics.ITL.labels(service)
        events = _engine_events(prepared.engine, GenerateRequest(
            prepared.request_id, prepared.prompt_tokens, prepared.params, adapter=prepared.adapter, service=service,
            tools=prepared.tools))

        def delta(text: str) -> TextDelta:
            logprobs = gate.release(text) if gate is not None else ()
            return TextDelta(text, Usage(prompt_tokens, completion_tokens), verdict, logprobs)

        try:
            async for event in events:
                if isinstance(event, TokenEvent):
                    now = event.at if event.at is not None else time.monotonic()
                    if first_token_at is None:
                        first_token_at = now
                        ttft_metric.observe(now - prepared.started)
                    else:
                        itl_metric.observe(now - last_token_at)
                    last_token_at = now
                    completion_tokens += 1
                    if gate is not None:
                        gate.token(_logprob_entry(event), event.text)
                else:
                    finish = event
                    if gate is not None:
                        gate.engine_text(event.text)
                text = event.text
                if output_filter is not None and text:
                    # The filter passes only text that is safe to show (masked at level 1).
                    text, stop_verdict = output_filter.feed(text)
                    verdict = verdict.with_output(output_filter.verdict.level)
                    if stop_verdict is not None:
                        finish_reason = "content_filter"
                        answer.append(text)
                        yield delta(text)
                        break  # closing the engine's events stops the generation
                if text:
                    answer.append(text)
                    yield delta(text)
                if finish is not None:
                    break
            if finish is not None and finish.reason == "error":
                log.error("engine error on %s: %s", prepared.request_id, finish.error)
                # A dead worker is the retryable "backend down"; anything else is an internal error.
                raise QianfanError(Code.INTERNAL if prepared.engine.ready else Code.SERVICE_UNAVAILABLE)
            if finish is not None and finish.call is not None and finish_reason is None:
                # The function-call branch: the answer is one call, moderated field by field.
                completion_tokens = finish.completion_tokens
                call, level = self._moderate_call(prepared, finish.call)
                verdict = verdict.with_output(level)
                usage = Usage(prompt_tokens, completion_tokens)
                metrics.QUEUE_TIME.labels(service).observe(finish.queue_seconds)
                finish_reason = "content_filter" if call is None else "function_call"
                if call is not None:
                    answer.append(f"{call.name}({call.arguments})")
                    yield FunctionCall(call.name, call.arguments, call.thoughts, usage, verdict, call_id())
                yield ChatEnd(finish_reason, usage, verdict)
                metrics.REQUESTS.labels(service, finish_reason).inc()
                completed = True
                return
            if finish_reason is None and output_filter is not None:
                rest, end_verdict = output_filter.finish()
                verdict = verdict.with_output(end_verdict.level)
                if end_verdict.level >= 2:
                    finish_reason = "content_filter"
                if rest or gate is not None:
                    answer.append(rest)
                    yield delta(rest)
            if finish is not None:
                completion_tokens = finish.completion_tokens
                metrics.QUEUE_TIME.labels(service).observe(finish.queue_seconds)
                if finish_reason is None:
                    finish_reason = "stop" if finish.matched_stop else _FINISH_REASONS.get(finish.reason, "normal")
            finish_reason = finish_reason or "normal"
            truncated = finish is not None and finish.reason == "length"
            yield ChatEnd(finish_reason, Usage(prompt_tokens, completion_tokens), verdict, truncated)
            metrics.REQUESTS.labels(service, finish_reason).inc()
            completed = True
        except BaseException:
            completed = False
            raise
        finally:
            await events.aclose()
            metrics.PROMPT_TOKENS.labels(service).inc(prompt_tokens)
            metrics.GENERATED_TOKENS.labels(service).inc(completion_tokens)
            metrics.E2E.labels(service).observe(time.monotonic() - prepared.started)
            self._record_usage(prepared, prompt_tokens, completion_tokens)
            # Tokens of a cancelled answer still count against TPM; so do memory extraction's.
            self._spawn(self._after_answer(prepared, "".join(answer) if completed else "", verdict,
                                           prompt_tokens + completion_tokens))

    def _moderate_call(self, prepared: PreparedChat, call: FunctionCallOut) -> tuple[FunctionCallOut | None, int]:
        """Output moderation of a call's `thoughts` and `arguments`, as for answer text: a hit at
        level 2 or more withholds the call (None). Level 1 masks the thoughts but not the arguments,
        which a program parses against the schema: they are reported (flag 1), not altered."""
        if self.moderator is None or prepared.service.safety == "off":
            return call, 0
        level = 0
        shown = []
        for text in (call.thoughts, call.arguments):
            output_filter = self.moderator.output_filter(policy=prepared.service.safety)
            released, stop = output_filter.feed(text)
            if stop is not None:
                return None, stop.level
            rest, final = output_filter.finish()
            if final.level >= 2:
                return None, final.level
            level = max(level, final.level)
            shown.append(released + rest)
        return FunctionCallOut(call.name, call.arguments, shown[0]), level

    # ---- after the answer --------------------------------------------------------------------

    async def _after_answer(self, prepared: PreparedChat, answer: str, verdict: Verdict, tokens: int) -> None:
        """Settle the request's tokens with TPM, remember what the user said (if asked), and add
        what remembering cost the engine to the same request's tokens."""
        await prepared.reservation.settle(tokens)
        try:
            await self._remember(prepared, answer, verdict)
        finally:
            if prepared.extra_tokens:
                await prepared.reservation.settle(tokens + prepared.extra_tokens)
                self._record_usage(prepared, prepared.extra_tokens, 0, requests=0)

    async def _remember(self, prepared: PreparedChat, answer: str, verdict: Verdict) -> None:
        request = prepared.request
        if (self.memory is None or not request.enable_user_memory or not request.user_id
                or request.user_memory_extract_level <= 0 or not answer):
            return
        generate = self._generator_for(prepared) if request.user_memory_extract_level >= 2 else None
        await self.memory.extract(
            app_id=prepared.app.id, api_path=prepared.service.api_path, user_id=request.user_id,
            request_id=prepared.request_id, messages=[(m.role, m.content) for m in request.messages],
            answer=answer, level=request.user_memory_extract_level, safety_level=verdict.flag,
            generate=generate,
        )

    def _generator_for(self, prepared: PreparedChat):
        """An async `messages -> text` callable on the service's own model, for level-2 extraction:
        capped at EXTRACTION_MAX_TOKENS, queued behind live requests, its tokens charged to the request."""
        engine = prepared.engine

        async def generate(messages: list[dict]) -> str:
            ids = await engine.chat_tokens(messages, None)
            max_tokens = min(EXTRACTION_MAX_TOKENS, engine.context_length - len(ids))
            if max_tokens < 1:
                return ""
            params = SamplingParams(temperature=0.1, top_p=0.5, max_tokens=max_tokens, frequency_penalty=0.0)
            parts = []
            generated = 0
            try:
                async for event in engine.generate(GenerateRequest(
                        prepared.request_id + "-mem", ids, params, adapter=prepared.adapter,
                        service=prepared.service.api_path, priority=BACKGROUND_PRIORITY)):
                    parts.append(event.text)
                    if isinstance(event, TokenEvent):
                        generated += 1
            finally:
                prepared.extra_tokens += len(ids) + generated
            return "".join(parts)

        return generate

    def _record_usage(self, prepared: PreparedChat, prompt_tokens: int, completion_tokens: int,
                      requests: int = 1) -> None:
        if self.usage is not None:
            self.usage.record(prepared.app.id, prepared.service.api_path, prompt_tokens, completion_tokens,
                              requests=requests)

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


def _logprob_entry(event: TokenEvent) -> TokenLogprob:
    return TokenLogprob(event.token_text, event.logprob,
                        tuple((t.token, t.logprob) for t in event.top_logprobs))


__all__ = ["ChatServing", "PreparedChat", "EngineOverloaded", "EngineUnavailable"]
