"""Benchmark: `.venv/bin/python -m bench.run [--targets http,llama-server,engine] [--clients 1,4,8,16] [--skip-extra]`.

For each N, runs N concurrent streaming clients against each target in turn (alternating, since this
machine drifts ±15 % over minutes) and prints aggregate tokens/s, TTFT and end-to-end latency, then
the ratio of each qfserve target to llama-server, and whether the issue's targets are met (tokens/s at
8 streams >= 1.0x, at 1 stream >= 0.97x, TTFT p50 at 8 streams <= 1.2x llama-server's), each with the
engine worker's step profile (ms per step, share in llama_decode) behind it. The issue measures the
full HTTP path (target `http`, the default beside llama-server); `engine` skips HTTP. llama-server is
built on first use (see bench/llama_server.py). TTFT over HTTP is the first streamed chunk, which
qfserve sends per clause. Unless --skip-extra, the shared-persona (bench/persona.py), overload
(bench/flood.py), multi-turn (bench/multiturn.py) and disconnect (bench/disconnect.py) benchmarks
run afterwards.
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
    parser.add_argument("--targets", default="http,llama-server", help="http, llama-server, engine (comma-separated)")
    parser.add_argument("--clients", default="1,4,8,16", help="concurrency levels")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=16, help="sequences per model (both servers)")
    parser.add_argument("--ctx-per-seq", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--skip-extra", action="store_true", help="skip the multi-turn and disconnect benchmarks")
    return parser.parse_args()


# (what, N, metric, bound): the targets, as ratios to llama-server.
TARGETS = [
    ("tokens/s at 8 streams", 8, "tokens_per_s", ">=", 1.0),
    ("tokens/s at 1 stream", 1, "tokens_per_s", ">=", 0.97),
    ("TTFT p50 at 8 streams", 8, "ttft_p50", "<=", 1.2),
]


def verdicts(by_n: dict[int, Summary], reference: dict[int, Summary]) -> list[str]:
    lines = []
    for what, n, metric, op, bound in TARGETS:
        if n not in by_n or n not in reference:
            lines.append(f"{what} {op} {bound}x llama-server: not measured (add {n} to --clients)")
            continue
        ratio = getattr(by_n[n], metric) / max(getattr(reference[n], metric), 1e-9)
        met = ratio >= bound if op == ">=" else ratio <= bound
        status = f"target met (ratio {ratio:.2f})" if met else f"NOT met: ratio {ratio:.2f}"
        lines.append(f"{what} {op} {bound}x llama-server: {status}")
    return lines


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
    http_cpu_ms: dict[int, float] = {}
    for target in targets:
        await target.start()
    try:
        for target in targets:  # warm-up: first-touch page faults, thread pools
            await drive(1, 1, target.one_request)
        for n in clients:
            print(f"\nN = {n}\n{'target':<16}{HEADER}")
            for target in targets:
                cpu_before = target.cpu_seconds()
                http_before = target.http_cpu_seconds() if hasattr(target, "http_cpu_seconds") else None
                ttft_before = await target.ttft_counters() if http_before is not None else None
                worker_before = await target.worker_counters() if hasattr(target, "worker_counters") else None
                summary = await drive(n, args.requests_per_client, target.one_request)
                summary.cpu = target.cpu_seconds() - cpu_before
                results[target.name][n] = summary
                print(f"{target.name:<16}{summary.row()}")
                if http_before is not None:
                    http_cpu = target.http_cpu_seconds() - http_before
                    http_cpu_ms[n] = 1000 * http_cpu / max(summary.tokens, 1)
                    ttft_sum, ttft_count = await target.ttft_counters()
                    server_ttft = (ttft_sum - ttft_before[0]) / max(ttft_count - ttft_before[1], 1)
                    print(f"{'':<16}  HTTP process alone: {http_cpu:.2f} CPU s, {http_cpu_ms[n]:.3f} CPU ms per token; "
                          f"server's first token (not chunk): mean {server_ttft * 1000:.0f} ms")
                if worker_before is not None:
                    # The profile behind a ratio: how much of the worker's step time llama_decode takes.
                    busy, decode, steps = (a - b for a, b in zip(await target.worker_counters(), worker_before))
                    if steps:
                        print(f"{'':<16}  engine worker: {steps} steps, {1000 * busy / steps:.1f} ms per step, "
                              f"{100 * decode / max(busy, 1e-9):.1f} % of it in llama_decode")
    finally:
        for target in targets:
            await target.close()

    save(args, results, http_cpu_ms)
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
        print("\nissue targets (ratios to llama-server)")
        for name, by_n in results.items():
            if name != "llama-server":
                for line in verdicts(by_n, reference):
                    print(f"{name:<16}{line}")

    if not args.skip_extra:
        from bench import disconnect, flood, multiturn, persona

        print()
        await persona.run(threads=args.threads)
        print()
        await flood.run(threads=args.threads)
        print()
        await multiturn.run(threads=args.threads)
        print()
        await disconnect.run(threads=args.threads)


def save(args: argparse.Namespace, results: dict[str, dict[int, Summary]], http_cpu_ms: dict[int, float]) -> None:
    """Keep each run's numbers in bench/results/ (git-ignored) for later comparison."""
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    path = folder / time.strftime("%Y%m%d-%H%M%S.json")
    rows = {
        name: {n: {**asdict(s), "tokens_per_s": s.tokens_per_s, "tokens_per_cpu_s": s.tokens_per_cpu_s} for n, s in by_n.items()}
        for name, by_n in results.items()
    }
    path.write_text(json.dumps({"settings": vars(args), "results": rows, "http_cpu_ms_per_token": http_cpu_ms}, indent=2))
    print(f"\nsaved {path}")


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # so `finally` stops llama-server and the engine on SIGTERM too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    asyncio.run(main())
