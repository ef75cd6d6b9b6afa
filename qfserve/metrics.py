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
