"""Choosing which of a user's memories to give the model: BM25 over jieba tokens.

`user_memory_level` (0–4) sets how many memories are recalled and how strict the relevance cut-off
is. A memory's relevance is its BM25 score as a share of the best score for this question (raw BM25
scores depend on the query's length and the size of the user's memory set), or, when the optional
embedder is on, its semantic share (semantic.py) where that is higher:

    level  at most  a memory is recalled when
    0      0        never: nothing is recalled
    1      3        its relevance is at least 50% of the best relevance (and above 0)
    2      5        its relevance is at least 25% of the best relevance (and above 0)
    3      8        it is relevant at all: shares a term with the question (or stands out semantically)
    4      12       always: the relevant ones first, then the most recently used fill up the rest

Ties, and the level-4 filling, go to the most recently used memory. Each memory is indexed with
its text plus a few words for its kind ("住 city live" for a location), so "where do I live?" and
"推荐一下我城市的餐厅" find the location even though they share no word with "用户住在杭州".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import bm25s

from qfserve.memory.semantic import Embedder, semantic_shares
from qfserve.memory.text import search_tokens
from qfserve.store.memories import Memory


@dataclass(frozen=True)
class RecallLevel:
    limit: int
    # Minimum score as a share of the best score; None recalls regardless of relevance.
    min_share: float | None


LEVELS = {
    0: RecallLevel(0, 0.0),
    1: RecallLevel(3, 0.5),
    2: RecallLevel(5, 0.25),
    3: RecallLevel(8, 0.0),
    4: RecallLevel(12, None),
}

_SLOT_WORDS = {
    "name": "名字 姓名 称呼 叫 name call",
    "age": "年龄 岁 多大 age old",
    "occupation": "职业 工作 做 job work occupation profession career",
    "workplace": "工作 公司 单位 上班 work company office job employer",
    "location": "住 居住 城市 哪里 哪儿 地方 家 附近 本地 live city home local nearby",
    "hometown": "来自 家乡 老家 出生 from hometown born",
    "pref": "喜欢 爱好 口味 兴趣 推荐 like love favorite prefer recommend hobby taste",
    "favorite": "喜欢 最爱 推荐 favorite like recommend",
    "allergy": "过敏 吃 食物 饮食 allergy allergic food eat diet",
    "plan": "打算 计划 准备 安排 旅行 plan trip travel",
    "relation": "家人 家庭 家里 family",
    "has": "家人 家庭 family",
}
_SLOT_TOKENS = {kind: search_tokens(words) for kind, words in _SLOT_WORDS.items()}


def _document(memory: Memory) -> list[str]:
    kind = memory.slot.split(":", 1)[0]
    return search_tokens(memory.text) + _SLOT_TOKENS.get(kind, [])


def _lexical(memories: Sequence[Memory], query: str) -> list[float]:
    """BM25 scores as shares of the best one, in [0, 1]."""
    query_tokens = search_tokens(query)
    if not query_tokens:
        return [0.0] * len(memories)
    index = bm25s.BM25()
    index.index([_document(m) for m in memories], show_progress=False)
    scores = [float(s) for s in index.get_scores(query_tokens)]
    best = max(scores)
    return [s / best if best > 0 else 0.0 for s in scores]


def _relevance(memories: Sequence[Memory], query: str, embedder: Embedder | None) -> list[float]:
    lexical = _lexical(memories, query)
    if embedder is None:
        return lexical
    semantic = semantic_shares(embedder.similarities(query, [m.text for m in memories]))
    return [max(pair) for pair in zip(lexical, semantic)]


def rank(memories: Sequence[Memory], query: str, level: int, embedder: Embedder | None = None) -> list[Memory]:
    """The memories to recall for `query` at `level`, best first."""
    spec = LEVELS[min(max(level, 0), 4)]
    if spec.limit == 0 or not memories:
        return []
    scores = _relevance(memories, query, embedder)
    order = sorted(range(len(memories)), key=lambda i: (-scores[i], -memories[i].last_used_at, -memories[i].id))
    if spec.min_share is None:
        return [memories[i] for i in order[: spec.limit]]
    best = scores[order[0]]
    if best <= 0:
        return []
    chosen = [i for i in order if scores[i] > 0 and scores[i] >= best * spec.min_share]
    return [memories[i] for i in chosen[: spec.limit]]
