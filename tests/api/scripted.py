"""A scripted stand-in for an engine, for HTTP-layer tests: deterministic text, no model.

It answers the engine's questions about itself without a tokenizer: a character is a token.
The real model runs through the same code in tests/e2e.
"""

from __future__ import annotations

from qfserve.engine.base import Engine
from qfserve.store import apps, services, tokens
from qfserve.store.db import Store


def published(data_dir, *, rpm: int, tpm: int) -> str:
    """A data dir holding app `a` and service `svc` (the default model, ERNIE-Speed-8K); a token of the app."""
    store = Store(data_dir)
    try:
        creds = apps.create_app(store, "a")
        services.publish_service(store, "svc", model="default", profile="ERNIE-Speed-8K", rpm=rpm, tpm=tpm)
        token, _, _ = tokens.issue_token(store, creds.app)
        return token
    finally:
        store.close()


class ScriptedEngineBase(Engine):
    def __init__(self, path: str):
        self._ready = False

    async def start(self) -> None:
        self._ready = True

    async def close(self) -> None:
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def chat_tokens(self, messages, system):
        text = (system or "") + "".join(m["content"] for m in messages)
        return [ord(c) % 1000 for c in text]

    @property
    def context_length(self) -> int:
        return 4096
