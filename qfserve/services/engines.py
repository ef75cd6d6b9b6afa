"""The engines services run on: embedded base models (one llama.cpp engine per base model, shared by
every service on it) and remote pools (one replica pool per `qfserve engine add`, one engine per
model served from it). Pools are read from the store when first used and re-read when the store
says they changed (`refresh`), so `engine add/remove` takes effect without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Callable

from qfserve.engine.base import Engine, EngineUnavailable
from qfserve.engine.prompt import default_model_path

log = logging.getLogger(__name__)

EngineFactory = Callable[[str], Engine]
GGUF_MAGIC = b"GGUF"


class ModelUnavailable(FileNotFoundError):
    """A service's model can't be used: missing, not a GGUF file, outside the models folder, or failed
    to load. A FileNotFoundError, so every caller that handles a missing model handles these too."""


def resolve_model(model: str, models_dir: str | os.PathLike | None = None) -> str:
    """The GGUF file a service's model string names, checked; raises ModelUnavailable.

    `default` is the embedded SmolLM2. Anything else must resolve (symlinks followed) to an existing
    file that starts with the GGUF magic bytes and, when `models_dir` is set, lies inside it; a
    relative path is then taken relative to `models_dir`.
    """
    if model == "default":
        return default_model_path()
    path = Path(model).expanduser()
    if models_dir is not None:
        root = Path(models_dir).expanduser().resolve()
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root):
            raise ModelUnavailable(f"model {model}: not inside the models folder {root}")
    else:
        resolved = path.resolve()
    if not resolved.is_file():
        raise ModelUnavailable(f"model file not found: {resolved}")
    try:
        with open(resolved, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelUnavailable(f"model {resolved}: cannot read it: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelUnavailable(f"model {resolved}: not a GGUF file")
    return str(resolved)


class EngineRegistry:
    def __init__(self, factory: EngineFactory, models_dir: str | os.PathLike | None = None,
                 pool_source: Callable[[str], object] | None = None):
        self._factory = factory
        self._models_dir = models_dir
        self._loaded: dict[str, Engine] = {}  # by resolved file path
        self._by_model: dict[str, Engine] = {}  # by the service's model string
        self._lock = asyncio.Lock()
        # scale-out (issue 11): remote pools. `pool_source(name)` reads a pool's row (blocking).
        self._pool_source = pool_source
        self._pools: dict[str, tuple[object, object]] = {}  # name -> (EnginePool row, ReplicaPool)
        self._remote: dict[tuple[str, str, str | None], Engine] = {}  # (pool, model, adapter) -> engine
        self._retiring: set[asyncio.Task] = set()
        self._by_path: dict[str, Engine] = {}  # api_path -> the engine it last ran on (forgotten on change)

    async def get(self, model: str) -> Engine:
        """The loaded engine; ModelUnavailable, with a one-line reason, when it can't be had."""
        found = self._by_model.get(model)  # the request path: no file-system look-up once loaded
        if found is not None:
            return found
        path = resolve_model(model, self._models_dir)
        async with self._lock:
            if path not in self._loaded:
                self._loaded[path] = await self._load(path)
            self._by_model[model] = self._loaded[path]
            return self._loaded[path]

    async def _load(self, path: str) -> Engine:
        log.info("loading base model %s", path)
        engine = None
        try:
            engine = self._factory(path)
            await engine.start()
        except Exception as exc:  # llama.cpp's load errors carry no detail worth a traceback
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.close()
            raise ModelUnavailable(f"model {path}: failed to load: {exc}") from None
        return engine

    async def for_service(self, service) -> Engine:
        """The engine a service runs on: embedded (`service.engine` None) or a remote pool's."""
        engine = await self._for_service(service)
        self._by_path[service.api_path] = engine
        return engine

    def engine_for_path(self, api_path: str) -> Engine | None:
        """The engine `api_path` ran on last, unless the store changed since (a cheap guess for
        admission at the door; the route still looks the service up)."""
        return self._by_path.get(api_path)

    async def _for_service(self, service) -> Engine:
        if service.engine is None:
            return await self.get(service.model)
        key = (service.engine, service.model, service.adapter)
        found = self._remote.get(key)
        if found is not None:
            return found
        async with self._lock:
            if key not in self._remote:
                pool = await self._pool(service.engine)
                engine = remote_engine(pool, service.model, service.adapter, self._pools[service.engine][0])
                await engine.start()
                self._remote[key] = engine
            return self._remote[key]

    def adapter_ref(self, service) -> str | None:
        """What `GenerateRequest.adapter` carries for a service's adapter: the llama.cpp GGUF path on
        the embedded engine, if it is still the file pinned at publish (the first check of a file
        hashes it: call in a thread); nothing on a remote one, whose engine is bound to the adapter's
        model name."""
        if not service.adapter or service.engine is not None:
            return None
        from qfserve.services.adapters import adapter_gguf

        return adapter_gguf(service.adapter, service.adapter_sha256)

    async def _pool(self, name: str):
        cached = self._pools.get(name)
        if cached is not None:
            return cached[1]
        row = await asyncio.to_thread(self._pool_source, name) if self._pool_source else None
        if row is None:
            raise EngineUnavailable(f"no engine named {name!r}")
        pool = replica_pool(row)
        self._pools[name] = (row, pool)
        return pool

    async def refresh(self) -> None:
        """Re-read the pools in use; a changed or removed pool is replaced, and the old one closed once
        its requests in flight have finished. A service may have moved: which engine each path ran
        on is forgotten."""
        self._by_path.clear()
        for name, (row, pool) in list(self._pools.items()):
            current = await asyncio.to_thread(self._pool_source, name) if self._pool_source else None
            if current == row:
                continue
            log.info("engine %s %s", name, "changed" if current is not None else "removed")
            async with self._lock:
                self._pools.pop(name, None)
                for key in [k for k in self._remote if k[0] == name]:
                    del self._remote[key]
            task = asyncio.get_running_loop().create_task(_close_when_idle(pool))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def engines(self) -> dict[str, Engine]:
        remote = {f"{pool}:{model}": engine for (pool, model, _), engine in self._remote.items()}
        return {**self._loaded, **remote}

    @property
    def ready(self) -> bool:
        # Remote pools do not hold a gateway back: their services answer 2 while no replica is healthy.
        return bool(self._loaded or self._remote) and all(engine.ready for engine in self._loaded.values())

    async def close(self) -> None:
        for engine in list(self._loaded.values()):
            await engine.close()
        self._loaded.clear()
        self._by_model.clear()
        self._by_path.clear()
        for _row, pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._remote.clear()
        for task in list(self._retiring):
            task.cancel()


# ---- scale-out (issue 11): building remote engines from pool rows ----------------------------

def replica_pool(row):
    from qfserve.engine.openai_compat import ChatTemplate, PoolSettings, ReplicaPool

    api_key = None
    if row.api_key_env:
        api_key = os.environ.get(row.api_key_env)
        if not api_key:
            log.error("engine %s: environment variable %s is not set; calling without an API key",
                      row.name, row.api_key_env)
    options = row.options or {}
    return ReplicaPool(row.name, row.urls, api_key=api_key, settings=PoolSettings.from_options(options),
                       api=options.get("api", "auto"), has_template=ChatTemplate.from_options(options) is not None)


def remote_engine(pool, model: str, adapter_dir: str | None, row) -> Engine:
    from qfserve.engine.openai_compat import ChatTemplate, RemoteEngine
    from qfserve.services.adapters import remote_adapter

    options = row.options or {}
    adapter = remote_adapter(adapter_dir, model) if adapter_dir else None
    return RemoteEngine(pool, model, adapter=adapter, template=ChatTemplate.from_options(options),
                        context_length=options.get("context_length"))


async def _close_when_idle(pool, limit: float = 600.0) -> None:
    waited = 0.0
    while any(r.in_flight for r in pool.replicas) and waited < limit:
        await asyncio.sleep(0.5)
        waited += 0.5
    await pool.close()
