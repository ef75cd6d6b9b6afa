"""Loaded base models: one engine per base model, shared by every service on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Callable

from qfserve.engine.base import Engine
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
    def __init__(self, factory: EngineFactory, models_dir: str | os.PathLike | None = None):
        self._factory = factory
        self._models_dir = models_dir
        self._loaded: dict[str, Engine] = {}  # by resolved file path
        self._by_model: dict[str, Engine] = {}  # by the service's model string
        self._lock = asyncio.Lock()

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
