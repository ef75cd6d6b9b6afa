"""The playground's controls: every seed chat parameter with its documented range and default.

The ranges are the seed's (protocol/chat.py enforces the same ones on the wire, so a value the
controls let through is one the server accepts). The page sends only what differs from the default.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.protocol.chat import MAX_STOP_CHARS, MAX_STOP_ITEMS, MAX_TOP_LOGPROBS


@dataclass(frozen=True)
class Control:
    name: str
    label: str
    kind: str  # number, integer, boolean, text, textarea, lines
    default: object = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    help: str = ""
    group: str = "sampling"


CONTROLS: tuple[Control, ...] = (
    Control("temperature", "temperature", "number", 0.95, 0.01, 1.0, 0.01, "(0, 1.0]; higher is more random"),
    Control("top_p", "top_p", "number", 0.7, 0.0, 1.0, 0.01, "[0, 1.0]"),
    Control("penalty_score", "penalty_score", "number", 1.0, 1.0, 2.0, 0.01, "[1.0, 2.0]; penalises repeats"),
    Control("frequency_penalty", "frequency_penalty", "number", 0.1, -2.0, 2.0, 0.01, "[-2.0, 2.0]"),
    Control("presence_penalty", "presence_penalty", "number", 0.0, -2.0, 2.0, 0.01, "[-2.0, 2.0]"),
    Control("diversity_penalty", "diversity_penalty", "number", 0.0, 0.0, 100.0, 0.1,
            "[0, 100]; accepted, only meaningful with group beam search"),
    Control("min_output_tokens", "min_output_tokens", "integer", None, 2, 2048, 1, "[2, 2048]; empty: none"),
    Control("max_output_tokens", "max_output_tokens", "integer", 1024, 2, 2048, 1, "[2, 2048]; default 1024"),
    Control("stop", "stop", "lines", None,
            help=f"one per line, up to {MAX_STOP_ITEMS}, each at most {MAX_STOP_CHARS} characters"),
    Control("logprobs", "logprobs", "boolean", False, help="return each token's log-probability", group="output"),
    Control("top_logprobs", "top_logprobs", "integer", None, 0, MAX_TOP_LOGPROBS, 1,
            f"[0, {MAX_TOP_LOGPROBS}] alternatives per token; needs logprobs", group="output"),
    Control("system", "system", "textarea", None, help="the persona", group="persona"),
    Control("user_setting", "user_setting", "textarea", None, help="the end user's profile", group="persona"),
    Control("user_id", "user_id", "text", None, help="the end user's id (required for memory)", group="memory"),
    Control("enable_user_memory", "enable_user_memory", "boolean", False, group="memory"),
    Control("user_memory_extract_level", "user_memory_extract_level", "integer", 0, 0, 2, 1,
            "0 off, 1 rules, 2 rules + model", group="memory"),
    Control("user_memory_level", "user_memory_level", "integer", 1, 0, 4, 1, "[0, 4] recall strength", group="memory"),
)

GROUPS = (("sampling", "Sampling"), ("output", "Log-probabilities"), ("persona", "Persona"), ("memory", "User memory"))
