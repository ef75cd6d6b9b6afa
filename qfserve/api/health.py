"""Liveness, readiness and Prometheus metrics.

Anonymous callers learn only ok / ready / not ready. `/metrics` (model paths, service names,
counters) needs `Authorization: Bearer <metrics_token>`; with no token configured it is served to
loopback clients only.
"""

from __future__ import annotations

import hmac
import ipaddress

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
    return json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _metrics_refusal(request: Request) -> Response | None:
    token = request.app.state.settings.metrics_token
    if token:
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return None
        return json_response({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"})
    if _is_loopback(request.client.host if request.client else None):
        return None
    return json_response({"error": "forbidden: /metrics is served to loopback clients unless a metrics token is set"},
                         status=403)


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    refusal = _metrics_refusal(request)
    if refusal is not None:
        return refusal
    by_model = {path: engine.stats() for path, engine in request.app.state.engines.engines().items()}
    for path, stats in by_model.items():
        metrics.RUNNING.labels(path).set(stats.get("running", 0))
        metrics.WAITING.labels(path).set(stats.get("waiting", 0))
    metrics.set_engine_stats(by_model)  # KV pool use, reuse, rejections (engine, issue 15)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
