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


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    adapter: str | None = None  # what the engine's `adapter_ref` returned; None is the base model
    service: str = ""  # for metrics labels only
    priority: int = 0  # 0 live requests; higher numbers (background work) wait until none is waiting


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


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    text: str = ""  # any held-back text released at the end
    error: str | None = None
    matched_stop: str | None = None  # the stop string that ended generation (reason "stop"); None at end-of-generation
    queue_seconds: float = 0.0  # time the request waited for a free sequence


EngineEvent = TokenEvent | FinishEvent


class Engine(abc.ABC):
    """A loaded base model that generates for many sequences at once."""

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
    async def chat_tokens(self, messages: list[dict[str, str]], system: str | None) -> list[int]:
        """The conversation as the model runs it: its chat template applied once, ending where the
        answer starts, tokenized. `system=None` leaves the system turn to the template.
        Caller text is never parsed as control tokens."""

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """Most tokens one sequence may hold, prompt and answer together."""

    def check_admission(self) -> None:
        """Raise EngineOverloaded when a request arriving now could not start in reasonable time.
        Called before any per-request work (tokenizing, memory recall), so a flood is refused cheaply."""

    def stats(self) -> dict:
        """Running and waiting sequences, for /readyz and /metrics."""
        return {}


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
