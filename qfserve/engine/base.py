"""The one engine interface: token ids and one SamplingParams in, token events out.

Implementations: `qfserve.engine.llamacpp` (embedded, a worker process per base model) and
`qfserve.engine.openai_compat` (a remote OpenAI-compatible server such as vLLM).
Nothing above this interface assumes llama.cpp: each engine answers how it turns a conversation
into tokens (its own chat template and tokenizer), how many tokens a sequence may hold, and
whether it can take a request now. The tokens counted are the tokens run: serving counts the ids
`chat_tokens` returns and hands exactly those to `generate`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding: the answer is `prefix` followed by JSON valid against `json_schema`.

    `lazy` (tool_choice `auto`): the model decides at its first token whether the answer is a call:
    it is when that token starts `prefix`, or when the probability of starting it reaches
    `threshold`; otherwise the answer is free text and nothing is constrained.
    Engines on llama.cpp turn the schema into a GBNF grammar and cache it in `grammar`.
    """

    json_schema: str  # JSON text
    prefix: str = ""
    lazy: bool = False
    threshold: float = 1.0  # only with `lazy`: 1.0 leaves the decision to sampling alone
    grammar: str | None = None


@dataclass(frozen=True)
class FunctionDef:
    """A function the model may call: `parameters` is a JSON schema (as JSON text)."""

    name: str
    description: str
    parameters: str
    examples: tuple = ()  # example exchanges (lists of message dicts), shown to the model as-is


@dataclass(frozen=True)
class Tools:
    """The functions offered with a request, and whether one must be called.

    `mode`: "auto" (the model decides), "required" (some call), or "function" (a call of `name`).
    Each engine renders them its own way (the embedded one: qfserve/engine/tool_prompt.py)."""

    functions: tuple[FunctionDef, ...]
    mode: str = "auto"
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode != "auto"

    def offered(self) -> tuple[FunctionDef, ...]:
        """The functions the answer may call: the named one, or all."""
        if self.mode == "function":
            return tuple(f for f in self.functions if f.name == self.name)
        return self.functions


@dataclass(frozen=True)
class FunctionCallOut:
    """A function call the model answered with; `arguments` is JSON text valid against the schema."""

    name: str
    arguments: str
    thoughts: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """Every generation knob of the seed, in engine terms (one type, as vLLM has)."""

    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 40  # llama-server's default; keeps top_p off the full vocabulary (engine-notes.md)
    repeat_penalty: float = 1.0  # the seed's penalty_score
    frequency_penalty: float = 0.1
    presence_penalty: float = 0.0
    penalty_last_n: int = -1  # generated tokens the penalties look back on; -1: the whole answer (never the prompt)
    max_tokens: int = 1024
    min_tokens: int = 0  # end-of-generation is suppressed until this many tokens exist
    stop: tuple[str, ...] = ()  # text never includes a stop string; a partial match is held back
    min_p: float = 0.05  # llama-server's default
    seed: int | None = None  # same seed, same request: same answer (even beside other sequences)
    logprobs: bool = False
    top_logprobs: int = 0
    constraint: Constraint | None = None  # structured output (response_format); calls come from `tools`


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    adapter: str | None = None  # what the engine's `adapter_ref` returned; None is the base model
    service: str = ""  # for metrics labels only
    priority: int = 0  # 0 live requests; higher numbers (background work) wait until none is waiting
    tools: Tools | None = None  # functions the answer may call (the engine constrains the call)


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `text` is what became safe to show (may be "" while held back)."""

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()
    token_text: str = ""  # the token's own piece, for logprobs
    # time.monotonic() when the engine made it (None: when it arrives): an engine may send tokens in groups
    at: float | None = None


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    text: str = ""  # any held-back text released at the end
    error: str | None = None
    matched_stop: str | None = None  # the stop string that ended generation (reason "stop"); None at end-of-generation
    queue_seconds: float = 0.0  # time the request waited for a free sequence
    call: FunctionCallOut | None = None  # the answer is this call (its tokens carried no text)


EngineEvent = TokenEvent | FinishEvent


class Engine(abc.ABC):
    """A loaded base model that generates for many sequences at once."""

    # Whether chat_tokens/generate take `tools` and `SamplingParams.constraint` (function calling,
    # structured output). Serving refuses those requests (336003) for an engine that does not.
    renders_tools: bool = False

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model (with progress shown); returns when ready to generate."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop admitting, cancel what runs, release the model."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[EngineEvent]:
        """Yield TokenEvents, then exactly one FinishEvent. Closing the iterator early cancels."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    # -- what the engine answers about itself --------------------------------------------------

    @abc.abstractmethod
    async def chat_tokens(self, messages: list[dict], system: str | None, tools: Tools | None = None) -> list[int]:
        """The conversation as the model runs it: its chat template applied once, ending where the
        answer starts, tokenized. `system=None` leaves the system turn to the template.
        Caller text is never parsed as control tokens.

        A message is `{"role", "content"}`; an assistant turn that called functions also has
        `tool_calls: [{"name", "arguments", "thoughts", "id"?}]`, and a function's result is
        `{"role": "function", "name", "content", "tool_call_id"?}` (ids where the surface has them: v2). `tools` are the functions offered now, rendered
        the engine's way (engines without function calling may leave the parameter out)."""

    def check_tools(self, tools: Tools) -> None:
        """Raise ValueError (the reason, for the caller) when these functions cannot be served,
        e.g. a schema the engine cannot constrain decoding to."""

    def check_constraint(self, constraint: Constraint) -> None:
        """Raise ValueError when the engine cannot constrain decoding to this structured output."""

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """Most tokens one sequence may hold, prompt and answer together."""

    def reserve(self) -> "AdmissionTicket | None":
        """At the door, before anything is read but the path: raise EngineOverloaded when a request
        arriving now could not start in time, else hold its place in the wait until
        `check_admission` (or `AdmissionTicket.release`). None: this engine predicts no wait."""
        return None

    def check_admission(self, max_tokens: int | None = None, ticket: "AdmissionTicket | None" = None) -> None:
        """Raise EngineOverloaded when a request arriving now could not start in reasonable time.
        Called before any per-request work (tokenizing, memory recall), so a flood is refused cheaply;
        `max_tokens` is the answer the request asks for at most (its prompt is not known yet);
        `ticket`, the place `reserve` held for it at the door, which this call takes over."""

    def stats(self) -> dict:
        """Running and waiting sequences, for /readyz and /metrics."""
        return {}


class AdmissionTicket:
    """A request's place in the predicted wait, held from the door until the engine admits it."""

    # Seconds the request was predicted to wait for a sequence when it took its place (0: it starts
    # at once). The door lets such a request yield to the refusals of a burst: it waits anyway.
    predicted_wait: float = 0.0

    def release(self) -> None:
        """Give the place back (the request ended before admission); idempotent."""


class EngineOverloaded(Exception):
    """The admission queue is full: answer 336100 at once."""


class EngineUnavailable(Exception):
    """The engine died or is not loaded: answer 2 (retryable)."""


class EnginePromptTooLong(Exception):
    """The engine refused the prompt as longer than its context (a remote server knows its own
    limit better than the gateway): answer 336103."""


@dataclass
class ModelInfo:
    """What the HTTP process needs to know about a base model to build prompts and count tokens."""

    path: str
    chat_template: str
    bos_token: str
    eos_token: str
    n_ctx_train: int
    extra: dict = field(default_factory=dict)
