"""Conversations → token ids with labels on response tokens only.

The base model's own chat template renders the text, exactly as the server renders prompts, so
the adapter learns the layout it will see at inference. To know which tokens belong to responses,
the conversation is rendered once per assistant turn: the text of messages[:i] with the generation
prompt is the part before response i, and messages[:i+1] ends where it ends. Each piece is
tokenized separately; chat templates put special tokens at these boundaries, so this matches
tokenizing the whole text, and the boundaries are exact instead of approximated with offsets.
The end-of-turn marker after a response is part of the response span: that is how the model
learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.sft.data import Conversation

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


@dataclass(frozen=True)
class Example:
    line: int
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the token is not part of a response
    truncated: bool

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _segments(tokenizer, conversation: Conversation) -> list[tuple[str, bool]]:
    """The rendered text cut into (piece, is_response) segments, in order."""
    messages = conversation.messages()
    segments: list[tuple[str, bool]] = []
    done = ""  # text rendered so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (before.startswith(done) and through.startswith(before)):
            raise ValueError(
                "the base model's chat template does not render conversations incrementally; "
                "cannot locate response tokens"
            )
        segments.append((before[len(done):], False))
        segments.append((through[len(before):], True))
        done = through
    return segments


def encode(tokenizer, conversation: Conversation, max_length: int) -> Example:
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_response in _segments(tokenizer, conversation):
        # The template already holds any BOS it wants; don't let the tokenizer add another.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if is_response else [IGNORE_INDEX] * len(ids))
    truncated = len(input_ids) > max_length
    return Example(
        line=conversation.line,
        input_ids=input_ids[:max_length],
        labels=labels[:max_length],
        truncated=truncated,
    )


def encode_all(tokenizer, conversations: list[Conversation], max_length: int) -> list[Example]:
    """Encodes every conversation; drops those truncated down to no response token at all."""
    examples = [encode(tokenizer, c, max_length) for c in conversations]
    return [e for e in examples if e.n_target_tokens > 0]
