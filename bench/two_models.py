"""Two base models on one machine: `.venv/bin/python -m bench.two_models [--max-tokens 64]`.

Two engine workers (two base models, here the same GGUF twice), each with `threads` = the
physical cores, decode 4 streams each at the same time. Printed: the tokens/s of both together,
with the workers taking turns at llama_decode (engine/llamacpp/cpu_turns.py, the default) and
without (QFSERVE_DECODE_LOCK=off), against one worker alone in the same run. Without turns ggml's
spinning barriers make the two workers wait on each other's descheduled threads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench.targets import EngineTarget
from bench.workload import drive
from qfserve.engine.llamacpp.protocol import physical_cores
from qfserve.engine.prompt import ChatPrompt, default_model_path


async def measure(lock: str | None, workers: int, *, streams: int, max_tokens: int, threads: int) -> float:
    """Tokens/s of `workers` engines, each serving `streams` streams at once."""
    if lock is None:
        os.environ.pop("QFSERVE_DECODE_LOCK", None)
    else:
        os.environ["QFSERVE_DECODE_LOCK"] = lock  # read by the worker processes started below
    model = default_model_path()
    prompts = ChatPrompt(model)
    targets = [EngineTarget(model, prompts, parallel=streams, ctx_per_seq=1024, threads=threads, max_tokens=max_tokens)
               for _ in range(workers)]
    for target in targets:
        await target.start()
    try:
        for target in targets:
            await drive(1, 1, target.one_request)  # warm-up
        started = time.perf_counter()
        summaries = await asyncio.gather(*(drive(streams, 1, t.one_request) for t in targets))
        return sum(s.tokens for s in summaries) / (time.perf_counter() - started)
    finally:
        for target in targets:
            await target.close()


async def run(max_tokens: int, streams: int, threads: int) -> None:
    print(f"two engine workers, {threads} threads each on {physical_cores()} physical cores, "
          f"{streams} streams each, {max_tokens} tokens per answer")
    alone = await measure(None, 1, streams=streams, max_tokens=max_tokens, threads=threads)
    turns = await measure(None, 2, streams=streams, max_tokens=max_tokens, threads=threads)
    free = await measure("off", 2, streams=streams, max_tokens=max_tokens, threads=threads)
    print(f"one worker alone:            {alone:7.1f} tok/s")
    print(f"two workers, taking turns:   {turns:7.1f} tok/s ({turns / alone:.2f}x one alone)")
    print(f"two workers, without turns:  {free:7.1f} tok/s ({free / alone:.2f}x one alone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    asyncio.run(run(args.max_tokens, args.streams, args.threads))


if __name__ == "__main__":
    main()
