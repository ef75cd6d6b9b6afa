"""Benchmark: `.venv/bin/python -m bench.run [--targets engine,llama-server,http] [--clients 1,4,8,16]`.

For each N, runs N concurrent streaming clients against each target in turn (alternating, since this
machine drifts ±15 % over minutes) and prints aggregate tokens/s, TTFT and end-to-end latency, then
the ratio of each qfserve target to llama-server. llama-server is built on first use (see
bench/llama_server.py). TTFT over HTTP is the first streamed chunk, which qfserve sends per clause.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from dataclasses import asdict
from pathlib import Path

from bench.workload import HEADER, Summary, drive
from qfserve.engine.llamacpp.protocol import physical_cores
from qfserve.engine.prompt import ChatPrompt, default_model_path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="engine,llama-server", help="engine, llama-server, http (comma-separated)")
    parser.add_argument("--clients", default="1,4,8,16", help="concurrency levels")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=16, help="sequences per model (both servers)")
    parser.add_argument("--ctx-per-seq", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=physical_cores())
    return parser.parse_args()


def make_targets(names: list[str], args: argparse.Namespace):
    from bench import targets

    model = default_model_path()
    prompts = ChatPrompt(model)
    common = dict(parallel=args.parallel, ctx_per_seq=args.ctx_per_seq, threads=args.threads, max_tokens=args.max_tokens)
    made = []
    for name in names:
        if name == "engine":
            made.append(targets.EngineTarget(model, prompts, **common))
        elif name == "llama-server":
            from bench.llama_server import ensure_llama_server

            made.append(targets.LlamaServerTarget(ensure_llama_server(), model, prompts, **common))
        elif name == "http":
            made.append(targets.QfserveHttpTarget(**common))
        else:
            raise SystemExit(f"unknown target {name!r}")
    return made


async def main() -> None:
    args = parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    targets = make_targets(args.targets.split(","), args)
    print(f"model {default_model_path()}\nthreads {args.threads}, parallel {args.parallel}, "
          f"ctx/seq {args.ctx_per_seq}, {args.max_tokens} tokens per request, {args.requests_per_client} requests per client")
    results: dict[str, dict[int, Summary]] = {t.name: {} for t in targets}
    for target in targets:
        await target.start()
    try:
        for target in targets:  # warm-up: first-touch page faults, thread pools
            await drive(1, 1, target.one_request)
        for n in clients:
            print(f"\nN = {n}\n{'target':<16}{HEADER}")
            for target in targets:
                cpu_before = target.cpu_seconds()
                summary = await drive(n, args.requests_per_client, target.one_request)
                summary.cpu = target.cpu_seconds() - cpu_before
                results[target.name][n] = summary
                print(f"{target.name:<16}{summary.row()}")
    finally:
        for target in targets:
            await target.close()

    save(args, results)
    reference = results.get("llama-server")
    if reference:
        print("\nratio to llama-server: tokens/s (tokens per CPU second)")
        for name, by_n in results.items():
            if name != "llama-server":
                ratios = "  ".join(
                    f"N={n}: {by_n[n].tokens_per_s / reference[n].tokens_per_s:.2f}x "
                    f"({by_n[n].tokens_per_cpu_s / max(reference[n].tokens_per_cpu_s, 1e-9):.2f}x)"
                    for n in clients
                )
                print(f"{name:<16}{ratios}")


def save(args: argparse.Namespace, results: dict[str, dict[int, Summary]]) -> None:
    """Keep each run's numbers in bench/results/ (git-ignored) for later comparison."""
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    path = folder / time.strftime("%Y%m%d-%H%M%S.json")
    rows = {
        name: {n: {**asdict(s), "tokens_per_s": s.tokens_per_s, "tokens_per_cpu_s": s.tokens_per_cpu_s} for n, s in by_n.items()}
        for name, by_n in results.items()
    }
    path.write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2))
    print(f"\nsaved {path}")


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # so `finally` stops llama-server and the engine on SIGTERM too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    asyncio.run(main())
