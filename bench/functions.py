"""Benchmark: `.venv/bin/python -m bench.functions [--streams 1,8] [--rounds 3] [--max-tokens 128]`.

Constrained against unconstrained decoding on the embedded engine, in generated tokens/s at 1 and
8 concurrent streams. Both modes run the same prompts for the same number of tokens: the
constrained one under a grammar (a JSON object with a long list of strings, so it keeps generating
for the whole budget, as a long call's arguments would); the unconstrained one as plain text with
end-of-generation held off. Modes alternate each round (the machine drifts ±15 % over minutes) and
the ratio constrained / unconstrained is printed per stream count, from medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from qfserve.engine.base import Constraint, GenerateRequest, SamplingParams, TokenEvent
from qfserve.engine.llamacpp.client import LlamaCppEngine
from qfserve.engine.llamacpp.protocol import physical_cores
from qfserve.engine.prompt import default_model_path

SCHEMA = json.dumps({
    "type": "object",
    "properties": {"notes": {"type": "array", "minItems": 60, "maxItems": 60,
                             "items": {"type": "string", "maxLength": 40}}},
    "required": ["notes"],
})
QUESTIONS = ["Describe the city of Paris.", "List facts about the ocean.", "What do cats like?",
             "Explain how bread is made.", "Tell me about the moon.", "Describe a forest in autumn.",
             "What is a computer?", "Write about mountains."]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=physical_cores())
    return parser.parse_args()


async def one(engine: LlamaCppEngine, index: int, constrained: bool, max_tokens: int, tag: str) -> int:
    question = QUESTIONS[index % len(QUESTIONS)]
    system = "Answer as a JSON object with a list of short notes." if constrained else None
    ids = await engine.chat_tokens([{"role": "user", "content": question}], system)
    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens,
                            constraint=Constraint(SCHEMA) if constrained else None)
    generated = 0
    async for event in engine.generate(GenerateRequest(f"{tag}-{index}", ids, params)):
        generated += isinstance(event, TokenEvent)
    return generated


async def measure(engine: LlamaCppEngine, streams: int, constrained: bool, max_tokens: int, tag: str) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(one(engine, i, constrained, max_tokens, tag) for i in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def main() -> None:
    args = parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    engine = LlamaCppEngine(default_model_path(), parallel=max(levels), ctx_per_seq=1024, threads=args.threads,
                            show_progress=False)
    await engine.start()
    try:
        await measure(engine, 1, True, 8, "warm")  # first grammar use: marker scan, pages in
        print(f"{'streams':>7} {'unconstrained tok/s':>20} {'constrained tok/s':>18} {'ratio':>6}")
        for streams in levels:
            free, constrained = [], []
            for round_ in range(args.rounds):
                for mode in ((False, True) if round_ % 2 == 0 else (True, False)):
                    rate = await measure(engine, streams, mode, args.max_tokens, f"{streams}-{round_}-{mode}")
                    (constrained if mode else free).append(rate)
            f, c = statistics.median(free), statistics.median(constrained)
            print(f"{streams:>7} {f:>20.1f} {c:>18.1f} {c / f:>6.2f}", flush=True)
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
