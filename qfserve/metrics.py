"""Prometheus metrics, served at /metrics. One registry per process (prometheus_client's default)."""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)

REQUESTS = Counter("qfserve_requests_total", "Chat requests answered, by service and outcome", ["service", "outcome"])
ERRORS = Counter("qfserve_errors_total", "Business errors returned, by code", ["code"])
PROMPT_TOKENS = Counter("qfserve_prompt_tokens_total", "Prompt tokens processed", ["service"])
GENERATED_TOKENS = Counter("qfserve_generated_tokens_total", "Tokens generated", ["service"])
RUNNING = Gauge("qfserve_running_sequences", "Sequences being decoded", ["model"])
WAITING = Gauge("qfserve_waiting_sequences", "Sequences waiting for a slot", ["model"])
TTFT = Histogram("qfserve_time_to_first_token_seconds", "Time to first token", ["service"], buckets=_LATENCY_BUCKETS)
ITL = Histogram("qfserve_inter_token_latency_seconds", "Time between tokens", ["service"], buckets=_TOKEN_BUCKETS)
QUEUE_TIME = Histogram("qfserve_queue_time_seconds", "Admission to first engine step", ["service"], buckets=_LATENCY_BUCKETS)
E2E = Histogram("qfserve_request_seconds", "End-to-end request latency", ["service"], buckets=_LATENCY_BUCKETS)
LIMIT_REJECTIONS = Counter("qfserve_limit_rejections_total",
                           "Requests refused by a limit, by code and reason (in_flight, daily, qps, auth_failures, rpm, tpm)",
                           ["code", "reason"])
IN_FLIGHT = Gauge("qfserve_requests_in_flight", "Chat requests in flight (the --max-in-flight ceiling counts these)")

# scale-out (issue 11): remote engine replicas, labelled by engine pool and replica URL.
REMOTE_IN_FLIGHT = Gauge("qfserve_remote_in_flight", "Requests in flight to a replica", ["engine", "replica"])
REMOTE_ERRORS = Counter("qfserve_remote_errors_total", "Failed replica calls, by kind", ["engine", "replica", "kind"])
REMOTE_LATENCY = Histogram("qfserve_remote_request_seconds", "Replica call duration (whole stream)",
                           ["engine", "replica"], buckets=_LATENCY_BUCKETS)
REMOTE_HEALTHY = Gauge("qfserve_remote_replica_healthy", "1 while a replica is admitted, 0 while ejected",
                       ["engine", "replica"])

# engine (issue 15): the embedded engines' own counters, read from their stats at each scrape.
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, REGISTRY  # noqa: E402

_ENGINE_COUNTERS = {
    "steps": ("qfserve_engine_steps", "Decode steps run"),
    "busy_seconds": ("qfserve_engine_busy_seconds", "Seconds the engine worker spent in steps"),
    "decode_seconds": ("qfserve_engine_decode_seconds", "Seconds of those inside llama_decode"),
    "prompt_tokens_reused": ("qfserve_engine_prompt_tokens_reused", "Prompt tokens taken from the KV pool (kept or copied), not prefilled"),
    "prompt_tokens_prefilled": ("qfserve_engine_prompt_tokens_prefilled", "Prompt tokens prefilled"),
    "rejected": ("qfserve_engine_rejected", "Requests refused at once (336100): predicted queue wait over the bound, or a full queue"),
    "queue_timeouts": ("qfserve_engine_queue_timeouts", "Requests refused (336100) after waiting the whole bound without starting"),
}
_ENGINE_GAUGES = {
    "kv_cells": ("qfserve_kv_cells", "Cells in the shared KV pool"),
    "kv_used": ("qfserve_kv_cells_used", "KV cells holding tokens (running and cached sequences)"),
    "kv_reserved": ("qfserve_kv_cells_reserved", "KV cells running sequences may still grow into"),
    "kv_cached": ("qfserve_kv_cells_cached", "KV cells only idle sequences' cached prefixes hold (evictable)"),
    "predicted_wait_seconds": ("qfserve_predicted_queue_wait_seconds", "Predicted wait for a sequence of a live request arriving now"),
    "decode_tokens_per_s": ("qfserve_engine_decode_tokens_per_second", "Measured decode throughput with every sequence busy"),
}
_engine_stats: dict[str, dict] = {}


def set_engine_stats(stats_by_model: dict[str, dict]) -> None:
    """What each loaded engine reported (Engine.stats()), exported at the next collect."""
    global _engine_stats
    _engine_stats = stats_by_model


class _EngineCollector:
    def collect(self):
        for key, (name, doc) in _ENGINE_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, stats in _engine_stats.items():
                if key in stats:
                    family.add_metric([model], float(stats[key]))
            yield family
        for key, (name, doc) in _ENGINE_GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for model, stats in _engine_stats.items():
                if key in stats:
                    family.add_metric([model], float(stats[key]))
            yield family


REGISTRY.register(_EngineCollector())
