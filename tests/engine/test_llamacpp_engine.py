"""LlamaCppEngine on the real SmolLM2-135M model: one worker process for the whole module.

Fixed seeds and small max_tokens keep this fast and deterministic on 2 cores.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from qfserve.engine.base import (
    EngineOverloaded,
    FinishEvent,
    GenerateRequest,
    SamplingParams,
    TokenEvent,
)
from qfserve.engine.llamacpp.client import LlamaCppEngine
from qfserve.engine.prompt import ChatPrompt, default_model_path

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARALLEL = 4
QUEUE_SIZE = 2
CTX_PER_SEQ = 512
_ids = itertools.count()


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    events: list[TokenEvent] = field(default_factory=list)
    finish: FinishEvent | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces) + (self.finish.text if self.finish else "")


@pytest.fixture(scope="module")
def chat_prompt() -> ChatPrompt:
    return ChatPrompt(default_model_path())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine():
    # One ggml thread: ggml's spinning thread barriers collapse when the CPU is shared (CI, other
    # test processes), and these tests check behaviour, not speed.
    engine = LlamaCppEngine(
        default_model_path(), parallel=PARALLEL, ctx_per_seq=CTX_PER_SEQ, queue_size=QUEUE_SIZE, threads=1
    )
    await engine.start()
    yield engine
    await engine.close()
    assert not engine.ready


def prompt_of(chat_prompt: ChatPrompt, question: str) -> list[int]:
    return chat_prompt.tokenize(chat_prompt.render([{"role": "user", "content": question}], None))


def request(tokens: list[int], **params) -> GenerateRequest:
    return GenerateRequest(f"req-{next(_ids)}", tokens, SamplingParams(**params))


async def run(engine: LlamaCppEngine, req: GenerateRequest) -> Result:
    result = Result()
    async for event in engine.generate(req):
        if isinstance(event, TokenEvent):
            result.tokens.append(event.token_id)
            result.pieces.append(event.text)
            result.events.append(event)
        else:
            result.finish = event
    assert result.finish is not None
    return result


async def wait_until_idle(engine: LlamaCppEngine, timeout: float = 5.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        stats = engine.stats()
        if stats["running"] == 0 and stats["in_flight"] == 0:
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine still busy: {engine.stats()}")


def repeated_ngrams(tokens: list[int], n: int = 2) -> int:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


async def test_a_request_generates(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "What is the capital of France?")
    result = await run(engine, request(tokens, max_tokens=24, seed=7, temperature=0.2))
    assert result.finish.reason in ("stop", "length")
    assert result.finish.prompt_tokens == len(tokens)
    assert result.finish.completion_tokens == len(result.tokens) > 0
    assert "Paris" in result.text


async def test_concurrent_requests_match_serial_runs(engine, chat_prompt):
    questions = ["Name a fruit.", "What is 2+2?", "Say hello in French.", "Name a color.", "Count to three."]
    reqs = [
        dict(tokens=prompt_of(chat_prompt, q), max_tokens=10, seed=11 + i, temperature=0.01)
        for i, q in enumerate(questions)
    ]
    serial = [await run(engine, request(r.pop("tokens"), **r)) for r in [dict(r) for r in reqs]]
    together = await asyncio.gather(*(run(engine, request(r.pop("tokens"), **r)) for r in [dict(r) for r in reqs]))
    # Five requests on four sequences: one waited in the queue and still finished.
    for alone, batched in zip(serial, together):
        assert batched.tokens == alone.tokens, (batched.finish, alone.finish)
        assert batched.finish.reason == alone.finish.reason
    assert engine.stats()["steps"] > 0


async def test_long_prompt_is_prefilled_in_chunks_beside_a_running_stream(engine, chat_prompt):
    story = " ".join(f"Line {i}: the cat sat on mat number {i}." for i in range(30))
    long_tokens = prompt_of(chat_prompt, story + " Summarize.")
    assert 256 < len(long_tokens) < CTX_PER_SEQ - 16  # more than one prefill chunk
    params = dict(max_tokens=8, seed=21, temperature=0.01)

    short = engine.generate(request(prompt_of(chat_prompt, "Count to fifty."), max_tokens=20, min_tokens=20, seed=1))
    short_events = [await short.__anext__()]
    beside = await run(engine, request(long_tokens, **params))  # first sight of this prompt: full prefill
    short_events += [event async for event in short]
    assert short_events[-1].reason == "length" and short_events[-1].completion_tokens == 20

    before = engine.stats()["prompt_tokens_reused"]
    alone = await run(engine, request(long_tokens, **params))  # now from the cache
    assert engine.stats()["prompt_tokens_reused"] - before == len(long_tokens) - 1
    assert beside.tokens == alone.tokens


async def test_repeat_penalty_lowers_repetition(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "List the numbers from 1 to 30.")  # ", " recurs: 1, 2, 3, ...
    plain, penalized = 0, 0
    for seed in (1, 2):
        common = dict(max_tokens=32, min_tokens=32, seed=seed, temperature=0.8, frequency_penalty=0.0)
        plain += repeated_ngrams((await run(engine, request(tokens, repeat_penalty=1.0, **common))).tokens)
        penalized += repeated_ngrams((await run(engine, request(tokens, repeat_penalty=2.0, **common))).tokens)
    assert penalized < plain


async def test_stop_truncates_exactly_and_never_leaks(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Describe the sea in two sentences.")
    params = dict(max_tokens=24, seed=3, temperature=0.1)
    full = await run(engine, request(tokens, **params))
    start = len(full.text) // 2
    stop = full.text[start : start + 5]
    expected = full.text[: full.text.index(stop)]

    cut = await run(engine, request(tokens, stop=(stop,), **params))
    assert cut.finish.reason == "stop"
    assert cut.finish.matched_stop == stop
    assert cut.text == expected
    emitted = ""
    for piece in cut.pieces:  # at no point did the stream show the stop string or run past it
        emitted += piece
        assert expected.startswith(emitted)


async def test_min_tokens_lengthens_an_answer_that_ends_early(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Reply with just the word yes.")
    short = await run(engine, request(tokens, max_tokens=64, seed=5, temperature=0.2))
    assert short.finish.reason == "stop"
    longer = await run(engine, request(tokens, max_tokens=64, min_tokens=len(short.tokens) + 10, seed=5, temperature=0.2))
    assert longer.finish.completion_tokens >= len(short.tokens) + 10


async def test_max_tokens_finishes_with_length(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Tell me a long story about a dragon.")
    result = await run(engine, request(tokens, max_tokens=5, seed=1))
    assert result.finish.reason == "length"
    assert result.finish.completion_tokens == len(result.tokens) == 5


async def test_logprobs_and_sorted_top_logprobs(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "What is the capital of Italy?")
    result = await run(engine, request(tokens, max_tokens=8, seed=2, logprobs=True, top_logprobs=5))
    for event in result.events:
        assert event.logprob is not None and event.logprob <= 0.0
        values = [top.logprob for top in event.top_logprobs]
        assert len(values) == 5
        assert values == sorted(values, reverse=True)
        assert all(v <= 0.0 for v in values)
        assert event.logprob <= values[0] + 1e-6
    plain = await run(engine, request(tokens, max_tokens=4, seed=2))
    assert all(e.logprob is None and e.top_logprobs == () for e in plain.events)


async def test_cancellation_frees_the_sequence(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Tell me a long story about a dragon.")
    stream = engine.generate(request(tokens, max_tokens=200, min_tokens=200, seed=1))
    seen = 0
    async for event in stream:
        seen += 1
        if seen == 3:
            break
    assert engine.stats()["running"] == 1
    await stream.aclose()
    await wait_until_idle(engine)


async def test_overload_raises_at_once_and_unstarted_streams_cancel(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Tell me a long story about a dragon.")
    streams = [
        engine.generate(request(tokens, max_tokens=200, min_tokens=200, seed=i))
        for i in range(PARALLEL + QUEUE_SIZE)
    ]
    with pytest.raises(EngineOverloaded):
        engine.generate(request(tokens, max_tokens=4))
    for stream in streams:
        await stream.aclose()
    await wait_until_idle(engine)


async def test_too_long_prompt_is_refused_and_the_engine_keeps_serving(engine, chat_prompt):
    long_prompt = prompt_of(chat_prompt, "word " * 600)
    assert len(long_prompt) > CTX_PER_SEQ
    refused = await run(engine, request(long_prompt, max_tokens=8))
    assert refused.finish.reason == "error"
    assert "exceeds the context" in refused.finish.error
    assert refused.finish.completion_tokens == 0

    fits_only_without_room = prompt_of(chat_prompt, "word " * 200)
    refused = await run(engine, request(fits_only_without_room, max_tokens=CTX_PER_SEQ))
    assert refused.finish.reason == "error"

    served = await run(engine, request(prompt_of(chat_prompt, "Hi!"), max_tokens=4, seed=1))
    assert served.finish.reason in ("stop", "length") and served.tokens
    assert engine.ready


async def test_second_turn_reuses_the_cached_prefix(engine, chat_prompt):
    history = [{"role": "user", "content": "Give me three tips for learning to cook."}]
    first_tokens = chat_prompt.tokenize(chat_prompt.render(history, None))
    first = await run(engine, request(first_tokens, max_tokens=24, seed=4))
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And one more?"}]
    second_tokens = chat_prompt.tokenize(chat_prompt.render(history, None))

    before = engine.stats()["prompt_tokens_reused"]
    await run(engine, request(second_tokens, max_tokens=4, seed=4))
    reused = engine.stats()["prompt_tokens_reused"] - before
    assert reused >= len(first_tokens)  # the whole first turn came from the cache


# -- LoRA adapters --------------------------------------------------------------------------------


def write_random_lora(path: str, scale: float) -> None:
    """A rank-8 adapter on every attention query projection of SmolLM2-135M (576 wide, 30 blocks),
    laid out as llama.cpp's convert_lora_to_gguf.py writes it."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    for block in range(30):
        name = f"blk.{block}.attn_q.weight"
        writer.add_tensor(f"{name}.lora_a", (rng.standard_normal((8, 576)) * 0.1).astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", (rng.standard_normal((576, 8)) * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def adapter_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("lora") / "random-q.gguf")
    write_random_lora(path, scale=1.0)
    return path


async def test_adapter_changes_output_and_mixes_with_base_requests(engine, chat_prompt, adapter_path):
    tokens = prompt_of(chat_prompt, "Name three animals.")
    params = dict(max_tokens=12, min_tokens=12, seed=9, temperature=0.01)
    base = await run(engine, request(tokens, **params))
    adapted = await run(engine, GenerateRequest(f"req-{next(_ids)}", tokens, SamplingParams(**params), adapter=adapter_path))
    assert adapted.finish.reason == "length"
    assert adapted.tokens != base.tokens  # the adapter is applied...

    # ...and only to its own requests when both kinds run at once (steps alternate adapter groups)
    base_again, adapted_again = await asyncio.gather(
        run(engine, request(tokens, **params)),
        run(engine, GenerateRequest(f"req-{next(_ids)}", tokens, SamplingParams(**params), adapter=adapter_path)),
    )
    assert base_again.tokens == base.tokens
    assert adapted_again.tokens == adapted.tokens


async def test_missing_adapter_is_an_error_finish(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Hi")
    result = await run(engine, GenerateRequest(f"req-{next(_ids)}", tokens, SamplingParams(max_tokens=4), adapter="/nonexistent.gguf"))
    assert result.finish.reason == "error" and "adapter" in result.finish.error


# -- worker death (its own engine: this one is killed) ------------------------------------------


async def test_worker_death_fails_pending_requests_and_marks_unavailable(chat_prompt):
    from qfserve.engine.base import EngineUnavailable

    doomed = LlamaCppEngine(default_model_path(), parallel=1, ctx_per_seq=256, threads=1, show_progress=False)
    await doomed.start()
    try:
        stream = doomed.generate(request(prompt_of(chat_prompt, "Tell me a story."), max_tokens=200, min_tokens=200))
        first = await stream.__anext__()
        assert isinstance(first, TokenEvent)
        doomed._process.kill()
        events = [event async for event in stream]
        assert isinstance(events[-1], FinishEvent)
        assert events[-1].reason == "error" and events[-1].completion_tokens >= 1
        assert not doomed.ready
        with pytest.raises(EngineUnavailable):
            doomed.generate(request([1, 2, 3], max_tokens=2))
    finally:
        await doomed.close()
