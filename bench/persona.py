"""Shared persona benchmark: `.venv/bin/python -m bench.persona [--rounds 3] [--clients 8]`.

A fine-tuned service sends the same system persona with every request. Each round sends `--clients`
concurrent streaming requests with the same ~400-token persona (new each round, so nothing of it is
cached yet) and different questions, to qfserve over HTTP and to llama-server (same GGUF, threads
and slots), alternating. qfserve prefills the persona once and copies its KV cells to the other
sequences, including while the first one is still prefilling it; llama-server reuses a prompt only
from a slot's own earlier request.

Printed per round and target: TTFT p50 / p95 (first streamed text), and the prompt tokens each
request actually prefilled (qfserve: its /metrics counter; llama-server: `timings.prompt_n`).
The target: qfserve's TTFT p50 <= 0.5x llama-server's (median of the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from bench.targets import LlamaServerTarget, QfserveHttpTarget
from bench.workload import QUESTIONS, percentile
from qfserve.engine.llamacpp.protocol import physical_cores
from qfserve.engine.prompt import ChatPrompt, default_model_path

TARGET_RATIO = 0.5
MAX_TOKENS = 8


def persona(round_id: int, prompts: ChatPrompt, tokens: int = 400) -> str:
    rules = []
    text = f"You are Captain Lumen, the guide of the Harbor Museum (edition {round_id})."
    while len(prompts.tokenize(text)) < tokens:
        i = len(rules) + 1
        rules.append(f"Rule {i}: when a visitor asks about exhibit {i * 7 + round_id}, answer warmly, "
                     f"mention the hall number {i}, and never invent dates.")
        text = " ".join([text, *rules])
    return text


async def qfserve_one(target: QfserveHttpTarget, system: str, question: str) -> float:
    body = {"system": system, "messages": [{"role": "user", "content": question}], "temperature": 0.8,
            "max_output_tokens": MAX_TOKENS, "min_output_tokens": MAX_TOKENS}
    ttft, _, _ = await target.chat(body)
    return ttft


async def llama_one(target: LlamaServerTarget, tokens: list[int]) -> tuple[float, int]:
    body = {"prompt": tokens, "n_predict": MAX_TOKENS, "ignore_eos": True, "stream": True, "temperature": 0.8}
    start = time.perf_counter()
    ttft, prefilled = None, 0
    async with target.client.stream("POST", "/completion", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("stop"):
                prefilled = int(chunk.get("timings", {}).get("prompt_n", 0))
    return (ttft if ttft is not None else time.perf_counter() - start), prefilled


async def measure(qf: QfserveHttpTarget, ls: LlamaServerTarget, prompts: ChatPrompt, *, rounds: int,
                  clients: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for name in ("qfserve http", "llama-server") if r % 2 == 0 else ("llama-server", "qfserve http"):
            system = persona(1000 * r + (1 if name == "llama-server" else 2), prompts)  # cold for each
            questions = [QUESTIONS[(r + k) % len(QUESTIONS)] for k in range(clients)]
            if name == "qfserve http":
                before = await qf.engine_counters()
                ttfts = await asyncio.gather(*(qfserve_one(qf, system, q) for q in questions))
                after = await qf.engine_counters()
                prefilled = (after.get("qfserve_engine_prompt_tokens_prefilled", 0)
                             - before.get("qfserve_engine_prompt_tokens_prefilled", 0)) / clients
            else:
                token_lists = [prompts.chat_tokens([{"role": "user", "content": q}], system) for q in questions]
                results = await asyncio.gather(*(llama_one(ls, t) for t in token_lists))
                ttfts = [t for t, _ in results]
                prefilled = sum(p for _, p in results) / clients
            prompt_tokens = len(prompts.chat_tokens([{"role": "user", "content": questions[0]}], system))
            row = dict(round=r + 1, target=name, ttft_p50=percentile(list(ttfts), 50), ttft_p95=percentile(list(ttfts), 95),
                       prefilled_per_request=prefilled, prompt_tokens=prompt_tokens)
            rows.append(row)
            print(f"round {row['round']} {name:<14} TTFT p50 {row['ttft_p50'] * 1000:6.0f} ms, p95 {row['ttft_p95'] * 1000:6.0f} ms; "
                  f"prompt tokens prefilled per request {prefilled:6.1f} of {prompt_tokens}")
    return rows


def report(rows: list[dict]) -> bool:
    ours = statistics.median(r["ttft_p50"] for r in rows if r["target"] == "qfserve http")
    theirs = statistics.median(r["ttft_p50"] for r in rows if r["target"] == "llama-server")
    ratio = ours / max(theirs, 1e-9)
    met = ratio <= TARGET_RATIO
    print(f"shared persona TTFT p50: qfserve {ours * 1000:.0f} ms, llama-server {theirs * 1000:.0f} ms")
    print(f"shared persona TTFT p50 <= {TARGET_RATIO}x llama-server: "
          + (f"target met (ratio {ratio:.2f})" if met else f"NOT met: ratio {ratio:.2f}"))
    return met


async def run(*, threads: int | None = None, parallel: int = 8, rounds: int = 3, clients: int = 8,
              ctx_per_seq: int = 1024) -> bool:
    from bench.llama_server import ensure_llama_server

    threads = threads or physical_cores()
    model = default_model_path()
    prompts = ChatPrompt(model)
    print(f"shared persona: {clients} concurrent requests, ~400-token persona, {rounds} rounds, parallel {parallel}")
    qf = QfserveHttpTarget(parallel=parallel, ctx_per_seq=ctx_per_seq, threads=threads, max_tokens=MAX_TOKENS)
    ls = LlamaServerTarget(ensure_llama_server(), model, prompts, parallel=parallel, ctx_per_seq=ctx_per_seq,
                           threads=threads, max_tokens=MAX_TOKENS)
    await qf.start()
    await ls.start()
    try:
        rows = await measure(qf, ls, prompts, rounds=rounds, clients=clients)
    finally:
        await qf.close()
        await ls.close()
    return report(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    met = asyncio.run(run(threads=args.threads, parallel=args.parallel, rounds=args.rounds, clients=args.clients))
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
