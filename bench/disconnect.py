"""Disconnect benchmark: `.venv/bin/python -m bench.disconnect [--clients 100] [--concurrency 16]`.

Streaming clients that hang up right after their first chunk, in waves of `--concurrency` (more
than the engine's sequences, so both running and waiting requests are abandoned). Afterwards the
server must report no running or waiting sequence within a few seconds (/readyz, the engine's own
count, and /metrics' qfserve_running_sequences), and the resident memory of the HTTP process and of
its engine worker must not grow: met when nothing is left running and growth < 20 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import psutil

from bench.targets import QfserveHttpTarget
from bench.workload import QUESTIONS
from qfserve.engine.llamacpp.protocol import physical_cores

MAX_GROWTH_MIB = 20.0
SETTLE_S = 5.0


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return 0.0


async def hang_ups(target: QfserveHttpTarget, clients: int, concurrency: int, max_tokens: int, offset: int = 0) -> int:
    """`clients` streams that each read one chunk and disconnect; returns how many got a chunk."""
    got = 0
    body = {"temperature": 0.8, "top_p": 0.95, "max_output_tokens": max_tokens, "min_output_tokens": max_tokens}

    async def one(i: int) -> None:
        nonlocal got
        question = QUESTIONS[(offset + i) % len(QUESTIONS)]
        ttft, text, _ = await target.chat({**body, "messages": [{"role": "user", "content": question}]},
                                          first_chunk_only=True)
        got += bool(text)

    for start in range(0, clients, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(start + concurrency, clients))))
    return got


async def engine_counts(target: QfserveHttpTarget) -> tuple[int, int, float]:
    """(running, waiting) from /readyz, and qfserve_running_sequences from /metrics."""
    models = (await target.client.get("/readyz")).json()["models"]
    running = sum(m.get("running", 0) for m in models.values())
    waiting = sum(m.get("waiting", 0) for m in models.values())  # includes requests still in the pipe
    text = (await target.client.get("/metrics")).text
    gauge = sum(float(v) for v in re.findall(r"^qfserve_running_sequences\{[^}]*\} ([0-9.e+-]+)$", text, re.M))
    return running, waiting, gauge


async def settle(target: QfserveHttpTarget) -> tuple[float, tuple[int, int, float]]:
    """Poll until nothing runs or waits; (seconds it took, last counts)."""
    start = time.perf_counter()
    while True:
        counts = await engine_counts(target)
        if counts == (0, 0, 0.0) or time.perf_counter() - start > SETTLE_S:
            return time.perf_counter() - start, counts
        await asyncio.sleep(0.1)


async def run(*, threads: int | None = None, parallel: int = 8, clients: int = 100, concurrency: int = 16,
              max_tokens: int = 256) -> bool:
    print(f"disconnect: {clients} streaming clients hang up after the first chunk, {concurrency} at a time, "
          f"parallel {parallel}, {max_tokens} tokens asked")
    target = QfserveHttpTarget(parallel=parallel, ctx_per_seq=1024, threads=threads or physical_cores(), max_tokens=max_tokens)
    await target.start()
    try:
        worker = target.worker_pid()
        # Warm-up wave: first-touch allocations (KV pages, sampler chains, pools) are not growth.
        await hang_ups(target, concurrency * 2, concurrency, max_tokens, offset=7)
        await settle(target)
        before = rss_mib(target.process.pid), rss_mib(worker)
        start = time.perf_counter()
        got = await hang_ups(target, clients, concurrency, max_tokens)
        took = time.perf_counter() - start
        settled_s, (running, waiting, gauge) = await settle(target)
        after = rss_mib(target.process.pid), rss_mib(worker)
        alive = target.process.poll() is None
    finally:
        await target.close()

    growth = (after[0] - before[0], after[1] - before[1])
    print(f"{got}/{clients} clients got a chunk before hanging up ({took:.1f} s); "
          f"{settled_s:.2f} s later: running {running}, waiting {waiting}, qfserve_running_sequences {gauge:g}")
    print(f"RSS HTTP process {before[0]:.1f} -> {after[0]:.1f} MiB ({growth[0]:+.1f}); "
          f"engine worker {before[1]:.1f} -> {after[1]:.1f} MiB ({growth[1]:+.1f}); server alive: {alive}")
    total = growth[0] + growth[1]
    met = alive and running == 0 and waiting == 0 and gauge == 0 and total < MAX_GROWTH_MIB
    verdict = "target met" if met else "NOT met"
    print(f"disconnects leave nothing running and RSS growth < {MAX_GROWTH_MIB:g} MiB: {verdict} "
          f"(running {running}, waiting {waiting}, growth {total:+.1f} MiB)")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    met = asyncio.run(run(threads=args.threads, parallel=args.parallel, clients=args.clients,
                          concurrency=args.concurrency, max_tokens=args.max_tokens))
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
