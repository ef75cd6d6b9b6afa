"""What serving yields, before any surface shapes it: the neutral answer events.

One request path, several surfaces (design.md): serving produces `TextDelta`s (or one
`FunctionCall`) and one `ChatEnd`;
a surface's renderer (v1 sentence chunks, v2 OpenAI deltas) turns them into its wire. Everything
here has already passed output moderation: a renderer may show any of it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives (OpenAI's shape)."""

    token: str
    logprob: float
    top_logprobs: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict:
        return {
            "token": self.token,
            "logprob": self.logprob,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in self.top_logprobs],
        }


@dataclass(frozen=True)
class Verdict:
    """What the wire reports of moderation.

    `flag` is the highest level found on either side. `need_clear_history` and `ban_round` describe
    the user input only (the seed: 表示用户输入是否存在安全风险): a hit in the model's own output
    stops the answer and raises `flag`, but does not claim the input was unsafe.
    """

    input_level: int = 0
    input_ban_round: int | None = None
    output_level: int = 0

    @property
    def flag(self) -> int:
        return max(self.input_level, self.output_level)

    @property
    def need_clear_history(self) -> bool:
        return self.input_level >= 2

    @property
    def ban_round(self) -> int | None:
        return self.input_ban_round if self.need_clear_history else None

    def with_output(self, level: int) -> "Verdict":
        if level <= self.output_level:
            return self
        return Verdict(self.input_level, self.input_ban_round, level)


SAFE = Verdict()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class TextDelta:
    """Answer text that may be shown now, with the logprobs of exactly the tokens it completes.

    `usage` and `verdict` are the running figures at this point of the answer."""

    text: str
    usage: Usage
    verdict: Verdict = SAFE
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class FunctionCall:
    """The answer is a call of `name`: `arguments` is JSON text valid against the function's schema
    (the embedded engine decodes it under a grammar), `thoughts` any reasoning the model gave.
    Both passed output moderation. At most one per answer on v1; `id` is for surfaces that name
    calls (v2's `tool_calls`)."""

    name: str
    arguments: str
    thoughts: str
    usage: Usage
    verdict: Verdict = SAFE
    id: str = ""


# Why an answer ended, in the v1 wire's words: `normal` (the model finished), `stop` (a stop string),
# `length` (max_output_tokens or the context), `content_filter` (moderation), `function_call` (the
# answer is a FunctionCall).
FINISH_REASONS = ("normal", "stop", "length", "content_filter", "function_call")


@dataclass(frozen=True)
class ChatEnd:
    finish_reason: str
    usage: Usage
    verdict: Verdict = SAFE
    truncated: bool = False


ChatEvent = TextDelta | FunctionCall | ChatEnd
