"""ChatPrompt on the real default model's vocabulary and chat template."""

import pytest

from qfserve.engine.prompt import ChatPrompt, default_model_path


@pytest.fixture(scope="module")
def chat_prompt() -> ChatPrompt:
    return ChatPrompt(default_model_path())


def test_default_system_comes_from_the_template(chat_prompt):
    text = chat_prompt.render([{"role": "user", "content": "Hi"}], None)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_explicit_system_replaces_the_default(chat_prompt):
    text = chat_prompt.render([{"role": "user", "content": "Hi"}], "Be terse.")
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    assert "SmolLM" not in text


def test_multi_turn_history_renders_in_order(chat_prompt):
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]
    text = chat_prompt.render(messages, None)
    assert text.index("one") < text.index("two") < text.index("three")


def test_special_tokens_are_parsed_and_no_bos_is_added(chat_prompt):
    tokens = chat_prompt.tokenize("<|im_start|>user\nHi<|im_end|>")
    assert tokens[0] == chat_prompt.bos_id == 1  # <|im_start|> is SmolLM2's BOS, written by the template
    assert tokens[-1] == chat_prompt.eos_id == 2
    assert tokens.count(1) == 1
    assert chat_prompt.count_tokens("hello world") == 2


def test_info(chat_prompt):
    info = chat_prompt.info()
    assert info.path == default_model_path()
    assert info.eos_token == "<|im_end|>"
    assert info.n_ctx_train == 8192
    assert "{% for message in messages %}" in info.chat_template
