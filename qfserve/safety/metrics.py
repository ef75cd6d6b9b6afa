"""Moderation metrics (default prometheus_client registry, so they show on /metrics)."""

from __future__ import annotations

try:
    from prometheus_client import Counter

    MODERATION_EVENTS = Counter(
        "qfserve_moderation_events_total",
        "Moderation hits (one per matched lexicon term occurrence that took effect), "
        "by category, effective level and direction (input|output)",
        ["category", "level", "direction"],
    )
except ImportError:  # pragma: no cover - prometheus_client is a hard dependency of the server
    class _Noop:
        def labels(self, *a, **k):
            return self

        def inc(self, *a, **k):
            pass

    MODERATION_EVENTS = _Noop()


def count(category: str, level: int, direction: str) -> None:
    MODERATION_EVENTS.labels(category, str(level), direction).inc()
