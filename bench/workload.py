"""The benchmark workload: N concurrent streaming clients, each sending requests back to back.

Every target gets the same prompts (token ids from the model's own chat template), the same sampling
settings and exactly `max_tokens` generated tokens per request (end-of-generation suppressed), so
tokens/s compare like for like.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

QUESTIONS = [
    "Explain how a bicycle stays upright.",
    "Write a short poem about autumn leaves.",
    "What are the benefits of drinking water?",
    "Describe the life cycle of a butterfly.",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "How do vaccines work?",
    "What is the difference between weather and climate?",
    "Describe a perfect weekend in the mountains.",
    "How does a computer store numbers?",
    "What makes a good friend?",
    "Explain photosynthesis to a child.",
    "List some healthy breakfast ideas.",
    "How do airplanes fly?",
    "What is the history of the Olympic Games?",
]

# llama-server's defaults where Qianfan has no say; end-of-generation suppressed (see module doc).
SAMPLING = dict(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)


@dataclass
class Sample:
    ttft: float  # seconds to the first generated token
    e2e: float  # seconds to the end of the answer
    tokens: int


@dataclass
class Summary:
    clients: int
    requests: int
    tokens: int
    wall: float
    ttft_p50: float
    ttft_p95: float
    e2e_p50: float
    e2e_p95: float
    cpu: float = 0.0  # CPU seconds the serving processes spent

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu if self.cpu else 0.0

    def row(self) -> str:
        return (
            f"{self.clients:>3} {self.requests:>4} {self.tokens_per_s:>8.1f} "
            f"{self.ttft_p50 * 1000:>8.0f} {self.ttft_p95 * 1000:>8.0f} "
            f"{self.e2e_p50:>7.2f} {self.e2e_p95:>7.2f} {self.tokens_per_cpu_s:>9.1f}"
        )


HEADER = "  N reqs    tok/s ttft50ms ttft95ms  e2e50s  e2e95s tok/cpu-s"


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def drive(clients: int, per_client: int, one_request: Callable[[int], Awaitable[Sample]]) -> Summary:
    """Run `clients` concurrent loops of `per_client` requests; request i uses prompt i."""

    async def client(index: int) -> list[Sample]:
        return [await one_request(index * per_client + k) for k in range(per_client)]

    start = time.perf_counter()
    results = await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    samples = [s for per in results for s in per]
    ttft = [s.ttft for s in samples]
    e2e = [s.e2e for s in samples]
    return Summary(
        clients=clients,
        requests=len(samples),
        tokens=sum(s.tokens for s in samples),
        wall=wall,
        ttft_p50=percentile(ttft, 50),
        ttft_p95=percentile(ttft, 95),
        e2e_p50=percentile(e2e, 50),
        e2e_p95=percentile(e2e, 95),
    )
