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
async def exact_engine():
    """q8_0 KV cells: bit-identical attention whatever the batch, chunking or reuse (native.py)."""
    engine = LlamaCppEngine(default_model_path(), parallel=2, ctx_per_seq=CTX_PER_SEQ, kv_type="q8_0", threads=1,
                            show_progress=False)
    await engine.start()
    yield engine
    await engine.close()


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
    tokens = prompt_of(chat_prompt, "Name the capital city of France.")
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


async def test_long_prompt_is_prefilled_in_chunks_beside_a_running_stream(exact_engine, chat_prompt):
    # q8_0 cells: llama.cpp runs one attention kernel for every chunk and batch, so the chunked
    # prefill beside a stream must give exactly the answer of the cached prompt decoded alone.
    engine = exact_engine
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


async def test_penalties_look_at_the_answer_not_the_prompt(engine, chat_prompt):
    # The seed: penalty_score "penalises tokens already generated". A prompt full of a word must not
    # make the answer avoid it (the old window started filled with the prompt's tail).
    question = "Paris " * 40 + "\nName the capital city of France."
    tokens = prompt_of(chat_prompt, question)
    strong = dict(max_tokens=12, seed=7, temperature=0.01, repeat_penalty=2.0, frequency_penalty=2.0, presence_penalty=2.0)
    answer = await run(engine, request(tokens, **strong))
    assert "Paris" in answer.text
    # Within the answer they bite: with the same strong penalties no token repeats in a list.
    counting = prompt_of(chat_prompt, "List the numbers from 1 to 30, separated by commas.")
    plain = await run(engine, request(counting, max_tokens=24, min_tokens=24, seed=1, temperature=0.01, frequency_penalty=0.0))
    penalized = await run(engine, request(counting, max_tokens=24, min_tokens=24, seed=1, temperature=0.01,
                                          frequency_penalty=2.0, presence_penalty=2.0))
    assert repeated_ngrams(plain.tokens, 1) > repeated_ngrams(penalized.tokens, 1)


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


async def test_adapter_changes_output_and_mixes_with_base_requests(exact_engine, chat_prompt, adapter_path):
    # q8_0 cells: the adapted answer is compared across a fresh prefill and a reused cache, and a
    # random adapter leaves logits close enough that f16's batch-dependent rounding flips tokens.
    engine = exact_engine
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


# -- the shared KV pool, prefix sharing, priorities, admission by predicted wait (issue 15) -------


async def flush_pool(engine, chat_prompt) -> None:
    """Run PARALLEL unrelated requests together: every slot is reused, old cached prefixes go."""
    await asyncio.gather(*(
        run(engine, request(prompt_of(chat_prompt, f"Say the number {i}."), max_tokens=2, seed=i))
        for i in range(PARALLEL)
    ))


PERSONA = " ".join(f"Rule {i}: answer politely, briefly and in English about topic {i}." for i in range(25))


async def test_a_prefix_being_prefilled_is_copied_not_prefilled_again(engine, chat_prompt):
    """Requests with the same persona arriving together: the first prefills it, the others wait for
    that prefill and copy its cells (counted as reused, not prefilled)."""
    def persona_prompt(question: str) -> list[int]:
        return chat_prompt.tokenize(chat_prompt.render([{"role": "user", "content": question}], PERSONA))

    prompts = [persona_prompt(q) for q in ("What is a cat?", "What is a dog?", "What is a cow?")]
    shared = common_prefix(prompts[0], prompts[1])
    assert shared > 300
    await flush_pool(engine, chat_prompt)
    stats = engine.stats()
    streams = [engine.generate(request(p, max_tokens=4, min_tokens=4, seed=3)) for p in prompts]
    results = await asyncio.gather(*(collect(s) for s in streams))
    assert all(r.finish.reason == "length" for r in results)
    reused = engine.stats()["prompt_tokens_reused"] - stats["prompt_tokens_reused"]
    prefilled = engine.stats()["prompt_tokens_prefilled"] - stats["prompt_tokens_prefilled"]
    assert reused >= 2 * (shared - 1)
    assert prefilled <= sum(len(p) for p in prompts) - 2 * (shared - 1)


async def test_a_copied_prefix_gives_the_answer_a_prefill_gives(exact_engine, chat_prompt):
    """The same request answers the same at top_p 0 whether its persona was copied from a running
    sequence or prefilled by itself (exact with q8_0 cells, see exact_engine)."""
    def persona_prompt(question: str) -> list[int]:
        return chat_prompt.tokenize(chat_prompt.render([{"role": "user", "content": question}], PERSONA))

    async def flush() -> None:  # both sequences taken over by unrelated prompts: no persona cached
        await asyncio.gather(*(run(exact_engine, request(prompt_of(chat_prompt, f"Say {i}."), max_tokens=2)) for i in range(2)))

    first, second = persona_prompt("What is a cat?"), persona_prompt("What is a dog?")
    greedy = dict(max_tokens=16, min_tokens=16, top_p=0.0, seed=3)
    await flush()
    before = exact_engine.stats()["prompt_tokens_reused"]
    alone = await run(exact_engine, request(second, **greedy))  # a full prefill
    assert exact_engine.stats()["prompt_tokens_reused"] - before < 16
    await flush()
    before = exact_engine.stats()["prompt_tokens_reused"]
    donor = exact_engine.generate(request(first, **greedy))
    copied = exact_engine.generate(request(second, **greedy))  # arrives while the donor prefills the persona
    _, beside = await asyncio.gather(collect(donor), collect(copied))
    assert exact_engine.stats()["prompt_tokens_reused"] - before >= common_prefix(first, second) - 1
    assert beside.tokens == alone.tokens


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


async def collect(stream) -> Result:
    result = Result()
    async for event in stream:
        if isinstance(event, TokenEvent):
            result.tokens.append(event.token_id)
            result.pieces.append(event.text)
            result.events.append(event)
        else:
            result.finish = event
    return result


async def test_same_seed_same_answer_alone_or_beside_others(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Write a sentence about the sea.")
    sampled = dict(max_tokens=20, min_tokens=20, seed=1234, temperature=0.9, top_p=0.9)
    alone = await run(engine, request(tokens, **sampled))
    others = [run(engine, request(prompt_of(chat_prompt, f"Tell me about {t}."), max_tokens=30, seed=i))
              for i, t in enumerate(["trees", "cars", "music"])]
    beside, *_ = await asyncio.gather(run(engine, request(tokens, **sampled)), *others)
    assert beside.tokens == alone.tokens
    other_seed = await run(engine, request(tokens, **{**sampled, "seed": 99}))
    assert other_seed.tokens != alone.tokens


async def test_live_requests_start_before_waiting_background_ones(engine, chat_prompt):
    tokens = prompt_of(chat_prompt, "Tell me a long story about a dragon.")
    holders = [engine.generate(request(tokens, max_tokens=200, min_tokens=200, seed=i)) for i in range(PARALLEL - 1)]
    short = engine.generate(request(tokens, max_tokens=6, min_tokens=6, seed=9))  # frees the first sequence
    for stream in holders + [short]:
        assert isinstance(await stream.__anext__(), TokenEvent)  # all four are running
    background = engine.generate(GenerateRequest(f"req-{next(_ids)}", tokens, SamplingParams(max_tokens=4, seed=1), priority=1))
    live = engine.generate(request(tokens, max_tokens=4, seed=2))  # arrives after the background one
    order = []

    async def first_token(name, stream):
        async for event in stream:
            if isinstance(event, TokenEvent) and name not in order:
                order.append(name)
                if name == "background":
                    for holder in holders:
                        await holder.aclose()  # let it run: the live one had its turn

    await asyncio.gather(first_token("background", background), first_token("live", live), collect(short))
    assert order == ["live", "background"]
    await wait_until_idle(engine)


async def test_a_request_that_cannot_start_in_time_is_refused_at_once(chat_prompt):
    """A flood against a small engine with a 1 s bound: some served in full, the rest refused with
    EngineOverloaded (at generate(), or, if the prediction was wrong, when the bound passed); no
    request is left waiting past the bound."""
    small = LlamaCppEngine(default_model_path(), parallel=2, kv_cells=1024, threads=1, max_queue_wait=1.0, show_progress=False)
    await small.start()
    try:
        tokens = prompt_of(chat_prompt, "Count from one to twenty.")
        refused_at_once = 0
        streams = []
        for i in range(60):
            try:
                small.check_admission()
                streams.append(small.generate(request(tokens, max_tokens=24, min_tokens=24, seed=i)))
            except EngineOverloaded:
                refused_at_once += 1

        async def outcome(stream):
            try:
                return await collect(stream)
            except EngineOverloaded:
                return None

        results = await asyncio.gather(*(outcome(s) for s in streams))
        served = [r for r in results if r is not None]
        assert refused_at_once >= 30 and served
        assert all(r.finish.reason == "length" and len(r.tokens) == 24 for r in served)
        assert all(r.finish.queue_seconds <= 1.0 + 0.5 for r in served)  # the worker's bound, not a speed claim
        stats = small.stats()
        assert stats["rejected"] == refused_at_once
        assert refused_at_once + len(served) + stats["queue_timeouts"] == 60
    finally:
        await small.close()


async def test_a_place_at_the_door_carries_its_predicted_wait(chat_prompt):
    """0 while a sequence is free; more once the only sequence is taken (the door lets such a
    request yield to a burst's refusals: api/door.py)."""
    single = LlamaCppEngine(default_model_path(), parallel=1, kv_cells=512, threads=1, max_queue_wait=600.0, show_progress=False)
    await single.start()
    try:
        first = single.reserve()
        assert first.predicted_wait == 0.0
        single.check_admission(64, first)
        stream = single.generate(request(prompt_of(chat_prompt, "Count from one to twenty."), max_tokens=64, min_tokens=64))
        await stream.__anext__()  # running: the sequence is taken
        second = single.reserve()
        assert second.predicted_wait > 0.0
        second.release()
        async for _ in stream:
            pass
    finally:
        await single.close()


async def test_one_long_sequence_uses_the_cells_several_short_ones_would(chat_prompt):
    """A unified pool of 1024 cells for 2 sequences: one prompt of ~700 tokens fits (two regions of
    512 would not); a second request that needs more cells than are left waits, then runs."""
    pooled = LlamaCppEngine(default_model_path(), parallel=2, kv_cells=1024, kv_unified=True, threads=1, show_progress=False)
    await pooled.start()
    try:
        assert pooled.context_length == 1024
        long_tokens = prompt_of(chat_prompt, " ".join(f"Item {i} is blue." for i in range(110)) + " Which item is last?")
        assert 600 < len(long_tokens) < 1024 - 40
        other = prompt_of(chat_prompt, "Name three colors.")
        first = pooled.generate(request(long_tokens, max_tokens=32, min_tokens=32, seed=1))
        assert isinstance(await first.__anext__(), TokenEvent)
        second = pooled.generate(request(other, max_tokens=1024 - len(long_tokens), seed=2))  # cannot fit beside it
        timeline = []

        async def watch(name, stream):
            async for event in stream:
                if isinstance(event, FinishEvent):
                    timeline.append((name, "finish", event))
                elif name == "waiting" and not any(n == name for n, _, _ in timeline):
                    timeline.append((name, "first token", event))

        await asyncio.gather(watch("long", first), watch("waiting", second))
        steps = [(name, what) for name, what, _ in timeline]
        assert steps == [("long", "finish"), ("waiting", "first token"), ("waiting", "finish")]
        assert timeline[0][2].reason == "length" and timeline[2][2].reason in ("stop", "length")
        refused = await run(pooled, request(long_tokens, max_tokens=1024))  # more than the pool holds
        assert refused.finish.reason == "error" and "exceeds the context" in refused.finish.error
        stats = pooled.stats()
        assert stats["kv_cells"] == 1024 and stats["kv_reserved"] == 0
    finally:
        await pooled.close()
