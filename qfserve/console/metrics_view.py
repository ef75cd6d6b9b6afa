"""What the console's metrics page plots, read from the server's own Prometheus metrics.

The page polls `snapshot()` and turns counters into rates itself (Δ between two polls), the way a
Prometheus `rate()` does, so the server keeps no history of its own.
"""

from __future__ import annotations

import time
from collections import defaultdict

from qfserve import metrics
from qfserve.services.engines import EngineRegistry, resolve_model
from qfserve.store import services as service_store
from qfserve.store.db import Store


def _by_service(metric, sample_name: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == sample_name:
                totals[sample.labels["service"]] += sample.value
    return totals


def snapshot(store: Store, engines: EngineRegistry) -> dict:
    """Cumulative counters per service, and each loaded engine's queue, at one instant."""
    requests = _by_service(metrics.REQUESTS, "qfserve_requests_total")
    tokens = _by_service(metrics.GENERATED_TOKENS, "qfserve_generated_tokens_total")
    ttft_sum = _by_service(metrics.TTFT, "qfserve_time_to_first_token_seconds_sum")
    ttft_count = _by_service(metrics.TTFT, "qfserve_time_to_first_token_seconds_count")
    engine_stats = {path: engine.stats() for path, engine in engines.engines().items()}
    for path, stats in engine_stats.items():  # the same gauges /metrics exports
        metrics.RUNNING.labels(path).set(stats.get("running", 0))
        metrics.WAITING.labels(path).set(stats.get("waiting", 0))
    services = {}
    for service in service_store.list_services(store):
        try:
            stats = engine_stats.get(resolve_model(service.model), {})
        except FileNotFoundError:
            stats = {}
        name = service.api_path
        services[name] = {
            "requests": requests.get(name, 0.0),
            "tokens": tokens.get(name, 0.0),
            "ttft_sum": ttft_sum.get(name, 0.0),
            "ttft_count": ttft_count.get(name, 0.0),
            "waiting": stats.get("waiting", 0),
            "running": stats.get("running", 0),
        }
    return {"time": time.time(), "services": services}


def engine_health(engines: EngineRegistry) -> list[dict]:
    """One row per loaded base model: ready or not, and its worker's counters."""
    rows = []
    for path, engine in engines.engines().items():
        stats = engine.stats()
        rows.append({"model": path, "ready": bool(getattr(engine, "ready", False)), "stats": stats})
    return rows
