"""Multi-turn benchmark: `.venv/bin/python -m bench.multiturn [--rounds 3] [--history-tokens 800]`.

A Qianfan client resends the whole conversation every turn. The engine keeps each finished
sequence's KV cache, so the second turn should only prefill what is new. Each round:

1. turn 1: a fresh history of about `--history-tokens` tokens plus a question (this warms a slot);
2. turn 2: that history, turn 1's question and answer, and a new question: TTFT *warm*;
3. eviction: `parallel` concurrent requests with unrelated prompts take over every slot;
4. turn 2's exact request again: TTFT *cold* (the same prompt, nothing of it cached).

TTFT is client-side, through the full HTTP path, to the first streamed chunk with text (qfserve
streams clause-sized chunks). The server's own time to the first token (its Prometheus histogram,
one request at a time) is shown beside it. The target: warm TTFT <= 0.3x cold (median of rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics

from bench.targets import QfserveHttpTarget
from qfserve.engine.llamacpp.protocol import physical_cores
from qfserve.engine.prompt import ChatPrompt, default_model_path

TARGET_RATIO = 0.3

_WORDS = (
    "river mountain library engine garden winter market signal harbor lantern orbit meadow canyon "
    "circuit ledger violin compass glacier pottery festival quarry harvest theorem archive tunnel "
    "falcon orchard beacon caravan vessel summit prairie spindle cathedral satellite reservoir "
    "parchment tapestry monsoon citadel lagoon furnace telescope workshop pavilion fountain"
).split()
_NATO = ("Alpha Bravo Charlie Delta Echo Foxtrot Golf Hotel India Juliett Kilo Lima Mike November Oscar "
         "Papa Quebec Romeo Sierra Tango Uniform Victor Whiskey Xray Yankee Zulu").split()
_VERBS = "carries builds follows measures repairs describes protects crosses gathers reveals".split()


def _paragraph(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        a, b, c = rng.sample(_WORDS, 3)
        out.append(f"The {a} {rng.choice(_VERBS)} the {b} near the old {c}.")
    return " ".join(out)


def history(seed: int, tokens: int, prompts: ChatPrompt) -> list[dict]:
    """Alternating user/assistant turns, about `tokens` tokens once rendered, ending on an answer."""
    rng = random.Random(seed)
    messages: list[dict] = []
    while len(prompts.tokenize(prompts.render(messages or [{"role": "user", "content": ""}], None))) < tokens:
        messages.append({"role": "user", "content": f"Tell me about the {rng.choice(_WORDS)} (part {len(messages) // 2 + 1})."})
        messages.append({"role": "assistant", "content": _paragraph(rng, 8)})
    return messages


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def _server_ttft(target: QfserveHttpTarget, before: tuple[float, float]) -> float:
    """The server's mean time to first token since `before` (one request at a time: that request's)."""
    text = (await target.client.get("/metrics")).text
    total = _metric(text, "qfserve_time_to_first_token_seconds_sum")
    count = _metric(text, "qfserve_time_to_first_token_seconds_count")
    return (total - before[0]) / max(count - before[1], 1)


async def _ttft_counters(target: QfserveHttpTarget) -> tuple[float, float]:
    text = (await target.client.get("/metrics")).text
    return (_metric(text, "qfserve_time_to_first_token_seconds_sum"),
            _metric(text, "qfserve_time_to_first_token_seconds_count"))


async def _reused(target: QfserveHttpTarget) -> int:
    """Prompt tokens the engine took from cached KV cells so far (its /metrics counter)."""
    return int((await target.engine_counters()).get("qfserve_engine_prompt_tokens_reused", 0))


async def measure(target: QfserveHttpTarget, prompts: ChatPrompt, *, parallel: int, rounds: int,
                  history_tokens: int, max_tokens: int) -> list[dict]:
    body = {"temperature": 0.8, "top_p": 0.95, "max_output_tokens": max_tokens, "min_output_tokens": max_tokens}
    rows = []
    for r in range(rounds):
        turns = history(1000 + r, history_tokens, prompts)
        first = turns + [{"role": "user", "content": "Summarize what we discussed in one sentence."}]
        _, answer, _ = await target.chat({**body, "messages": first})
        second = first + [{"role": "assistant", "content": answer or "OK."},
                          {"role": "user", "content": "Which of those topics is the oldest? Explain briefly."}]
        prompt_tokens = len(prompts.tokenize(prompts.render(second, None)))

        before, reused = await _ttft_counters(target), await _reused(target)
        warm, _, _ = await target.chat({**body, "messages": second})
        warm_server = await _server_ttft(target, before)
        warm_reused = await _reused(target) - reused

        # Evict: every slot takes an unrelated prompt. Each starts with a word of its own, so that
        # none shares more than the template's header with another slot (the engine picks the idle
        # slot with the longest shared prefix, then the least recently used).
        await asyncio.gather(*(
            target.chat({**body, "max_output_tokens": 8, "min_output_tokens": 8, "messages": [{
                "role": "user", "content": f"{_NATO[(r * parallel + k) % len(_NATO)]}: say a number."}]})
            for k in range(parallel)
        ))

        before, reused = await _ttft_counters(target), await _reused(target)
        cold, _, _ = await target.chat({**body, "messages": second})
        cold_server = await _server_ttft(target, before)
        cold_reused = await _reused(target) - reused
        rows.append(dict(prompt_tokens=prompt_tokens, warm=warm, cold=cold, warm_server=warm_server, cold_server=cold_server,
                         warm_reused=warm_reused, cold_reused=cold_reused))
        print(f"round {r + 1}: {prompt_tokens} prompt tokens (cached: warm {warm_reused}, cold {cold_reused}); "
              f"TTFT warm {warm * 1000:.0f} ms, cold {cold * 1000:.0f} ms "
              f"(ratio {warm / cold:.2f}); server first token warm {warm_server * 1000:.0f} ms, "
              f"cold {cold_server * 1000:.0f} ms (ratio {warm_server / max(cold_server, 1e-9):.2f})")
    return rows


def report(rows: list[dict]) -> bool:
    ratio = statistics.median(r["warm"] / r["cold"] for r in rows)
    server_ratio = statistics.median(r["warm_server"] / max(r["cold_server"], 1e-9) for r in rows)
    print(f"multi-turn TTFT, second turn warm / same history cold (median of {len(rows)}): {ratio:.2f} "
          f"(server first token: {server_ratio:.2f})")
    met = ratio <= TARGET_RATIO
    print(f"multi-turn TTFT <= {TARGET_RATIO}x cold: " + (f"target met (ratio {ratio:.2f})" if met else f"NOT met: ratio {ratio:.2f}"))
    return met


async def run(*, threads: int | None = None, parallel: int = 8, rounds: int = 3, history_tokens: int = 800,
              max_tokens: int = 32) -> bool:
    print(f"multi-turn: {rounds} rounds, ~{history_tokens}-token histories, parallel {parallel}")
    prompts = ChatPrompt(default_model_path())
    target = QfserveHttpTarget(parallel=parallel, ctx_per_seq=2048, threads=threads or physical_cores(), max_tokens=max_tokens)
    await target.start()
    try:
        rows = await measure(target, prompts, parallel=parallel, rounds=rounds, history_tokens=history_tokens,
                             max_tokens=max_tokens)
    finally:
        await target.close()
    return report(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history-tokens", type=int, default=800)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    met = asyncio.run(run(threads=args.threads, parallel=args.parallel, rounds=args.rounds,
                          history_tokens=args.history_tokens, max_tokens=args.max_tokens))
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
