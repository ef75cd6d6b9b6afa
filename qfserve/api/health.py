"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from qfserve import metrics
from qfserve.api.errors import json_response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    state = request.app.state
    engines = state.engines.engines()
    details = {path: engine.stats() for path, engine in engines.items()}
    saturated = any(s.get("waiting", 0) >= state.settings.queue_size > 0 for s in details.values())
    ready = state.engines.ready and not saturated and not getattr(state, "shutting_down", False)
    return json_response({"ready": ready, "models": details}, status=200 if ready else 503)


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    by_model = {path: engine.stats() for path, engine in request.app.state.engines.engines().items()}
    for path, stats in by_model.items():
        metrics.RUNNING.labels(path).set(stats.get("running", 0))
        metrics.WAITING.labels(path).set(stats.get("waiting", 0))
    metrics.set_engine_stats(by_model)  # KV pool use, reuse, rejections (engine, issue 15)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
