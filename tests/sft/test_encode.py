"""Chat-template encoding: loss is computed on response tokens (and their end-of-turn) only."""

from __future__ import annotations

import pytest

from qfserve.sft.data import Conversation, Turn
from qfserve.sft.encode import IGNORE_INDEX, encode


@pytest.fixture(scope="module")
def tokenizer(base_gguf):
    from qfserve.sft.base import _load_cached

    return _load_cached(base_gguf)[1]


def test_only_responses_are_labelled(tokenizer):
    conversation = Conversation(
        line=1, system="Be brief.",
        turns=(Turn("你是谁", "我是小岚。"), Turn("Who made you?", "Qinglan Lab.")),
    )
    example = encode(tokenizer, conversation, max_length=512)
    # The whole sequence is exactly the chat template's rendering of the conversation.
    rendered = tokenizer.apply_chat_template(conversation.messages(), tokenize=False)
    assert tokenizer.decode(example.input_ids) == rendered
    labelled = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    # Both answers, each with its end-of-turn marker (so the model learns to stop), nothing else.
    assert labelled == "我是小岚。<|im_end|>\nQinglan Lab.<|im_end|>\n"
    assert "Be brief" not in labelled and "你是谁" not in labelled


def test_truncation_keeps_prefix(tokenizer):
    conversation = Conversation(line=1, turns=(Turn("hi", "hello " * 50),))
    example = encode(tokenizer, conversation, max_length=40)
    assert len(example.input_ids) == len(example.labels) == 40
    assert example.truncated
