"""Constrained decoding in the real engine worker (SmolLM2-135M): structured output, forced calls,
calls cut short, and constrained sequences batched beside free ones."""

from __future__ import annotations

import asyncio
import itertools
import json

import jsonschema
import pytest
import pytest_asyncio

from qfserve.engine.base import (
    Constraint,
    FinishEvent,
    FunctionDef,
    GenerateRequest,
    SamplingParams,
    TokenEvent,
    Tools,
)
from qfserve.engine.llamacpp.client import LlamaCppEngine
from qfserve.engine.prompt import default_model_path

pytestmark = pytest.mark.asyncio(loop_scope="module")
_ids = itertools.count()

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pets": {"type": "array", "items": {"type": "string", "enum": ["cat", "dog", "fish"]}, "maxItems": 3}},
    "required": ["name", "age", "pets"]}
WEATHER = FunctionDef("get_weather", "Get the current weather for a city", json.dumps({
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine():
    engine = LlamaCppEngine(default_model_path(), parallel=4, ctx_per_seq=1024, queue_size=4, threads=1)
    await engine.start()
    yield engine
    await engine.close()


async def run(engine, tokens, params, tools=None) -> tuple[list[TokenEvent], FinishEvent]:
    events, finish = [], None
    async for event in engine.generate(GenerateRequest(f"c-{next(_ids)}", tokens, params, tools=tools)):
        if isinstance(event, TokenEvent):
            events.append(event)
        else:
            finish = event
    return events, finish


async def test_structured_output_always_parses_and_validates(engine):
    for seed, question in enumerate(["Tell me about a person.", "Who is your friend?", "Describe someone."]):
        tokens = await engine.chat_tokens([{"role": "user", "content": question}], "Answer in JSON.")
        params = SamplingParams(max_tokens=200, seed=seed, constraint=Constraint(json.dumps(PERSON)))
        events, finish = await run(engine, tokens, params)
        text = "".join(e.text for e in events) + finish.text
        assert finish.reason == "stop" and finish.call is None
        jsonschema.validate(json.loads(text), PERSON)


async def test_a_forced_call_comes_back_as_a_call_with_no_text(engine):
    tools = Tools((WEATHER,), "function", "get_weather")
    tokens = await engine.chat_tokens([{"role": "user", "content": "Is it sunny in Madrid?"}], None, tools)
    events, finish = await run(engine, tokens, SamplingParams(max_tokens=100, seed=3), tools)
    assert finish.call is not None and finish.call.name == "get_weather"
    assert json.loads(finish.call.arguments)["city"]
    assert all(e.text == "" for e in events) and finish.text == ""
    assert finish.completion_tokens == len(events) > 0


async def test_a_call_cut_by_max_tokens_is_plain_text(engine):
    tools = Tools((WEATHER,), "function", "get_weather")
    tokens = await engine.chat_tokens([{"role": "user", "content": "Weather in Lima?"}], None, tools)
    events, finish = await run(engine, tokens, SamplingParams(max_tokens=6, seed=1), tools)
    assert finish.reason == "length" and finish.call is None
    assert ("".join(e.text for e in events) + finish.text).startswith("<tool_call>")


async def test_constrained_sequences_leave_free_ones_untouched(engine):
    free_tokens = await engine.chat_tokens([{"role": "user", "content": "Name three colours."}], None)
    free = SamplingParams(max_tokens=24, seed=5, temperature=0.5)
    alone, _ = await run(engine, free_tokens, free)
    json_tokens = await engine.chat_tokens([{"role": "user", "content": "A person, please."}], "Answer in JSON.")
    constrained = SamplingParams(max_tokens=60, seed=5, constraint=Constraint(json.dumps(PERSON)))
    (beside, _), (structured, finish) = await asyncio.gather(run(engine, free_tokens, free),
                                                             run(engine, json_tokens, constrained))
    assert [e.token_id for e in beside] == [e.token_id for e in alone]
    assert finish.reason in ("stop", "length")
