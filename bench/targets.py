"""What the benchmark drives: our engine directly, llama.cpp's llama-server, or qfserve over HTTP.

Each target has `start()`, `one_request(i) -> Sample` and `close()`. All of them generate exactly
`max_tokens` tokens per request from the same prompts and sampling settings.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.workload import QUESTIONS, SAMPLING, Sample
from qfserve.engine.base import GenerateRequest, SamplingParams, TokenEvent
from qfserve.engine.prompt import ChatPrompt


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of a process and its children: a load-independent cost measure,
    since wall-clock throughput on a shared 2-core machine swings with everyone else's work."""
    if pid is None:
        return 0.0
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in processes)
    except psutil.NoSuchProcess:
        return 0.0


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on and this process has not handed out before: the kernel can give
    the same free port to two bind(0) calls in a row, and two targets on one port (llama-server
    binds with SO_REUSEPORT) would share each other's requests."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


async def wait_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
            try:
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class EngineTarget:
    """LlamaCppEngine in this process, its worker in another: no HTTP."""

    name = "qfserve engine"

    def __init__(self, model_path: str, prompts: ChatPrompt, *, parallel: int, ctx_per_seq: int, threads: int, max_tokens: int):
        from qfserve.engine.llamacpp.client import LlamaCppEngine

        self.engine = LlamaCppEngine(model_path, parallel=parallel, ctx_per_seq=ctx_per_seq, threads=threads, show_progress=False)
        self.tokens = [prompts.tokenize(prompts.render([{"role": "user", "content": q}], None)) for q in QUESTIONS]
        self.max_tokens = max_tokens
        self._ids = 0

    async def start(self) -> None:
        await self.engine.start()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.engine._process.pid if self.engine._process else None)

    async def worker_counters(self) -> tuple[float, float, int]:
        stats = self.engine.stats()
        return stats.get("busy_seconds", 0.0), stats.get("decode_seconds", 0.0), stats.get("steps", 0)

    async def one_request(self, i: int) -> Sample:
        self._ids += 1
        params = SamplingParams(max_tokens=self.max_tokens, min_tokens=self.max_tokens, seed=i, **SAMPLING)
        request = GenerateRequest(f"bench-{self._ids}", self.tokens[i % len(self.tokens)], params)
        start = time.perf_counter()
        ttft, tokens = None, 0
        async for event in self.engine.generate(request):
            if isinstance(event, TokenEvent):
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
        return Sample(ttft or 0.0, time.perf_counter() - start, tokens)

    async def close(self) -> None:
        await self.engine.close()


class LlamaServerTarget:
    """llama.cpp's llama-server on the same model, threads and slots, via its /completion API."""

    name = "llama-server"

    def __init__(self, binary: Path, model_path: str, prompts: ChatPrompt, *, parallel: int, ctx_per_seq: int, threads: int, max_tokens: int):
        self.port = free_port()
        self.command = [
            str(binary), "-m", model_path, "--host", "127.0.0.1", "--port", str(self.port),
            "-t", str(threads), "-tb", str(threads), "-np", str(parallel), "-c", str(parallel * ctx_per_seq),
            "--no-repack",  # as our engine: repacked (AMX) kernels fault on this machine's CPU
            "--no-webui",
        ]
        self.tokens = [prompts.tokenize(prompts.render([{"role": "user", "content": q}], None)) for q in QUESTIONS]
        self.max_tokens = max_tokens
        self.process: subprocess.Popen | None = None
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        log = open(tempfile.gettempdir() + f"/llama-server-{self.port}.log", "w")  # kept for post-mortems
        # A stdin pipe held open: run in the background (stdin at EOF), llama-server stopped after
        # its first requests with "cleaning up before exit".
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
        await wait_http(f"http://127.0.0.1:{self.port}/health", self.process)
        # A new connection per request: llama-server's HTTP library closes a kept-alive connection
        # after a few requests or seconds idle, and a request sent on it just then failed with
        # "Server disconnected without sending a response" (seen when other targets ran in between).
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=600,
                                        limits=httpx.Limits(max_keepalive_connections=0))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid if self.process else None)

    async def one_request(self, i: int) -> Sample:
        body = {
            "prompt": self.tokens[i % len(self.tokens)],
            "n_predict": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "seed": i,
            "min_p": 0.05,
            "repeat_last_n": 64,
            "temperature": SAMPLING["temperature"],
            "top_p": SAMPLING["top_p"],
            "top_k": SAMPLING["top_k"],
            "repeat_penalty": SAMPLING["repeat_penalty"],
            "frequency_penalty": SAMPLING["frequency_penalty"],
            "presence_penalty": SAMPLING["presence_penalty"],
        }
        start = time.perf_counter()
        ttft, tokens = None, 0
        async with self.client.stream("POST", "/completion", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and not chunk.get("stop"):
                    ttft = time.perf_counter() - start
                if chunk.get("stop"):
                    tokens = chunk.get("tokens_predicted", 0)
        return Sample(ttft or 0.0, time.perf_counter() - start, tokens)

    async def close(self) -> None:
        if self.client:
            await self.client.aclose()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class QfserveHttpTarget:
    """The whole qfserve server (`qfserve serve`), called like a Qianfan client would."""

    name = "qfserve http"

    def __init__(self, *, parallel: int, ctx_per_seq: int, threads: int, max_tokens: int, extra: tuple[str, ...] = ()):
        self.data_dir = Path(tempfile.mkdtemp(prefix="qfserve-bench-"))
        self.url = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/bench"
        self.port = free_port()
        self.settings = ["--parallel", str(parallel), "--ctx-per-seq", str(ctx_per_seq), "--threads", str(threads), *extra]
        self.max_tokens = max_tokens
        self.process: subprocess.Popen | None = None
        self.client: httpx.AsyncClient | None = None

    def _cli(self, *args: str) -> dict:
        env = {**os.environ, "QFSERVE_DATA_DIR": str(self.data_dir)}
        out = subprocess.run([sys.executable, "-m", "qfserve", *args, "--json"], env=env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    async def start(self) -> None:
        creds = self._cli("app", "create", "bench")
        self._cli("service", "publish", "bench", "--model", "default", "--rpm", "1000000", "--tpm", "1000000000")
        log = open(self.data_dir / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qfserve", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--log-level", "warning", *self.settings],
            stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{self.port}"
        await wait_http(f"{base}/readyz", self.process)
        self.client = httpx.AsyncClient(base_url=base, timeout=600)
        token = await self.client.post(
            "/oauth/2.0/token",
            params={"grant_type": "client_credentials", "client_id": creds["api_key"], "client_secret": creds["secret_key"]},
            json={},
        )
        self.access_token = token.json()["access_token"]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid if self.process else None)  # the server and its engine worker

    def http_cpu_seconds(self) -> float:
        """CPU time of the HTTP process alone (not its engine worker)."""
        try:
            return sum(psutil.Process(self.process.pid).cpu_times()[:2]) if self.process else 0.0
        except psutil.NoSuchProcess:
            return 0.0

    async def ttft_counters(self) -> tuple[float, float]:
        """(sum, count) of the server's own time-to-first-token histogram: the first *token*, where
        the client only sees the first clause-sized chunk."""
        text = (await self.client.get("/metrics")).text
        values = {}
        for name in ("sum", "count"):
            match = re.search(rf"^qfserve_time_to_first_token_seconds_{name}{{[^}}]*}} ([0-9.e+-]+)$", text, re.M)
            values[name] = float(match.group(1)) if match else 0.0
        return values["sum"], values["count"]

    async def engine_counters(self) -> dict[str, float]:
        """The engine's own counters from /metrics (qfserve_engine_*, qfserve_kv_*), summed over models."""
        text = (await self.client.get("/metrics")).text
        counters: dict[str, float] = {}
        for match in re.finditer(r"^(qfserve_(?:engine|kv)_[a-z_]+?)(?:_total)?{[^}]*} ([0-9.e+-]+)$", text, re.M):
            counters[match.group(1)] = counters.get(match.group(1), 0.0) + float(match.group(2))
        return counters

    async def worker_counters(self) -> tuple[float, float, int]:
        """(busy, decode seconds, steps) of the engine worker."""
        c = await self.engine_counters()
        return (c.get("qfserve_engine_busy_seconds", 0.0), c.get("qfserve_engine_decode_seconds", 0.0),
                int(c.get("qfserve_engine_steps", 0)))

    def worker_pid(self) -> int | None:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        # The spawn context also starts multiprocessing's resource tracker: the worker is the big one.
        sizes = []
        for child in children:
            try:
                sizes.append((child.memory_info().rss, child.pid))
            except psutil.NoSuchProcess:
                pass
        return max(sizes)[1] if sizes else None

    async def chat(self, body: dict, *, first_chunk_only: bool = False) -> tuple[float, str, dict]:
        """One streaming chat call: (seconds to the first chunk with text, the answer, the last chunk).
        With `first_chunk_only` the client hangs up right after that first chunk."""
        start = time.perf_counter()
        ttft, parts, last = None, [], {}
        async with self.client.stream("POST", self.url, params={"access_token": self.access_token},
                                      json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                last = json.loads(line[6:])
                if "error_code" in last:
                    raise RuntimeError(f"qfserve answered {last}")
                parts.append(last.get("result", ""))
                if ttft is None and last.get("result"):
                    ttft = time.perf_counter() - start
                    if first_chunk_only:
                        break
        return (ttft if ttft is not None else time.perf_counter() - start), "".join(parts), last

    async def one_request(self, i: int) -> Sample:
        body = {
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "stream": True,
            "temperature": SAMPLING["temperature"],
            "top_p": SAMPLING["top_p"],
            "penalty_score": SAMPLING["repeat_penalty"],
            "max_output_tokens": self.max_tokens,
            "min_output_tokens": self.max_tokens,
        }
        start = time.perf_counter()
        ttft, tokens = None, 0
        async with self.client.stream("POST", self.url, params={"access_token": self.access_token}, json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error_code" in chunk:
                    raise RuntimeError(f"qfserve answered {chunk}")
                if ttft is None and chunk.get("result"):
                    ttft = time.perf_counter() - start
                tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
        return Sample(ttft or 0.0, time.perf_counter() - start, tokens)

    async def close(self) -> None:
        if self.client:
            await self.client.aclose()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
