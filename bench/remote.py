"""Benchmark (issue 11): tokens/s through qfserve → remote engine, against the same engine called
directly, in the same run, at 1 and 8 streams; and the gateway's CPU milliseconds per request.

    python -m bench.remote [--streams 1,8] [--requests 3] [--max-tokens 64] [--rounds 3]
                           [--url URL --model NAME]   # an already running server (vLLM), else:

By default the engine is llama-cpp-python's server on the default GGUF (tests/remote/stand_in.py,
one thread; it runs one request at a time, so streams queue there exactly as they do when called
directly). Both paths ask for exactly `--max-tokens` tokens (min = max) of the same prompt, so they
do the same engine work; the paths alternate in each round (this machine drifts ±15 % over
minutes) and the medians are compared. Target: qfserve ≥ 0.97× direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.targets import cpu_seconds, free_port
from qfserve.engine.prompt import ChatPrompt, default_model_path

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Tell me about the city of Paris."}]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--requests", type=int, default=3, help="requests per stream per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="an OpenAI-compatible server already running (e.g. vLLM)")
    parser.add_argument("--model", default="smollm2")
    return parser.parse_args()


def wait_http(url: str, process: subprocess.Popen | None, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {limit:.0f}s")


def qfserve_cli(data: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "qfserve", *args, "--json"], capture_output=True, text=True,
                         env={**os.environ, "QFSERVE_DATA_DIR": str(data)}, check=True)
    return json.loads(out.stdout)


async def direct_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, n: int) -> int:
    body = {"model": model, "prompt": prompt, "stream": True, "max_tokens": n, "min_tokens": n,
            "temperature": 0.8, "top_p": 0.8, "top_k": 40, "min_p": 0.05, "stream_options": {"include_usage": True}}
    pieces, usage = 0, None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                break  # as the gateway does: the server may keep the connection a while after it
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                pieces += 1
    return usage["completion_tokens"] if usage else pieces


async def gateway_request(client: httpx.AsyncClient, url: str, token: str, n: int) -> int:
    body = {"messages": MESSAGES, "stream": True, "max_output_tokens": n, "min_output_tokens": n,
            "temperature": 0.8, "top_p": 0.8}
    last = None
    async with client.stream("POST", url, params={"access_token": token}, json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
    if not last or "usage" not in last:
        raise SystemExit(f"the gateway answered {last}")
    return last["usage"]["completion_tokens"]


async def run_batch(streams: int, per_stream: int, one) -> tuple[float, int]:
    """Tokens/s of `streams` concurrent clients, each making `per_stream` requests in a row."""
    async with httpx.AsyncClient(timeout=600) as client:
        async def stream() -> int:
            return sum([await one(client) for _ in range(per_stream)])

        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(stream() for _ in range(streams))))
        return tokens / (time.perf_counter() - started), tokens


async def main() -> None:
    args = parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    prompt = ChatPrompt(default_model_path()).render(MESSAGES)
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            url = args.url
            api = "vllm" if url else "llama-cpp"
            if url is None:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.remote.stand_in", "--port", str(port), "--model",
                     default_model_path(), "--name", args.model], cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                wait_http(f"{url}/v1/models", processes[-1])
            data = Path(tmp)
            creds = qfserve_cli(data, "app", "create", "bench")
            pool = ["engine", "add", "gpu", "--url", url, "--api", api]
            if api == "llama-cpp":
                pool += ["--chat-template", default_model_path(), "--context-length", "1024"]
            qfserve_cli(data, *pool)
            qfserve_cli(data, "service", "publish", "bench", "--engine", "gpu", "--model", args.model,
                        "--rpm", "1000000", "--tpm", "1000000000", "--safety", "off")
            gport = free_port()
            gateway = subprocess.Popen([sys.executable, "-m", "qfserve", "serve", "--data-dir", str(data),
                                        "--port", str(gport), "--log-level", "warning"], cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(gateway)
            base = f"http://127.0.0.1:{gport}"
            wait_http(f"{base}/readyz", gateway)
            token = httpx.post(f"{base}/oauth/2.0/token", params={
                "grant_type": "client_credentials", "client_id": creds["api_key"],
                "client_secret": creds["secret_key"]}).json()["access_token"]
            chat_url = f"{base}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/bench"
            n = args.max_tokens

            def direct(client):
                return direct_request(client, url, args.model, prompt if api == "llama-cpp" else prompt, n)

            def through(client):
                return gateway_request(client, chat_url, token, n)

            await run_batch(1, 1, through)  # warm both paths (first request loads, first count)
            await run_batch(1, 1, direct)
            print(f"engine: {api} at {url}, {n} tokens per request, {args.requests} requests per stream, "
                  f"{args.rounds} rounds")
            print(f"{'streams':>7} {'direct tok/s':>13} {'qfserve tok/s':>14} {'ratio':>6} {'gateway CPU ms/req':>19}")
            results = {}
            for streams in levels:
                rates = {"direct": [], "qfserve": []}
                cpu, requests_done = 0.0, 0
                for round_ in range(args.rounds):
                    order = [("direct", direct), ("qfserve", through)]
                    for name, one in (order if round_ % 2 == 0 else order[::-1]):
                        before = cpu_seconds(gateway.pid)
                        rate, _tokens = await run_batch(streams, args.requests, one)
                        if name == "qfserve":
                            cpu += cpu_seconds(gateway.pid) - before
                            requests_done += streams * args.requests
                        rates[name].append(rate)
                d, q = statistics.median(rates["direct"]), statistics.median(rates["qfserve"])
                ms = 1000 * cpu / max(requests_done, 1)
                results[streams] = {"direct": d, "qfserve": q, "ratio": q / d, "gateway_cpu_ms_per_request": ms}
                print(f"{streams:>7} {d:>13.1f} {q:>14.1f} {q / d:>6.3f} {ms:>19.2f}")
            for streams, r in results.items():
                verdict = "met" if r["ratio"] >= 0.97 else "NOT met"
                print(f"tokens/s at {streams} stream(s) >= 0.97x direct: {verdict} (ratio {r['ratio']:.3f})")
            out = ROOT / "bench" / "results"
            out.mkdir(exist_ok=True)
            (out / "remote.json").write_text(json.dumps({"engine": api, "max_tokens": n, "results": results}, indent=2))
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    asyncio.run(main())
