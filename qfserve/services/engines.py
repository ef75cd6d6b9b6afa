"""Loaded base models: one engine per base model, shared by every service on it."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from qfserve.engine.base import Engine
from qfserve.engine.prompt import default_model_path

log = logging.getLogger(__name__)

EngineFactory = Callable[[str], Engine]


def resolve_model(model: str) -> str:
    """`default` is the embedded SmolLM2; anything else is a GGUF path."""
    return default_model_path() if model == "default" else os.path.abspath(model)


class EngineRegistry:
    def __init__(self, factory: EngineFactory):
        self._factory = factory
        self._loaded: dict[str, Engine] = {}  # by resolved file path
        self._by_model: dict[str, Engine] = {}  # by the service's model string
        self._lock = asyncio.Lock()

    async def get(self, model: str) -> Engine:
        found = self._by_model.get(model)  # the request path: no file-system look-up once loaded
        if found is not None:
            return found
        path = resolve_model(model)
        async with self._lock:
            if path not in self._loaded:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"model file not found: {path}")
                log.info("loading base model %s", path)
                engine = self._factory(path)
                await engine.start()
                self._loaded[path] = engine
            self._by_model[model] = self._loaded[path]
            return self._loaded[path]

    def engines(self) -> dict[str, Engine]:
        return dict(self._loaded)

    @property
    def ready(self) -> bool:
        return bool(self._loaded) and all(engine.ready for engine in self._loaded.values())

    async def close(self) -> None:
        for engine in list(self._loaded.values()):
            await engine.close()
        self._loaded.clear()
        self._by_model.clear()
