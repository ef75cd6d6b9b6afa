"""The worker's KV cells: which cells each sequence holds, and which it shares.

With llama.cpp's `kv_unified` (`shared=True`) there is one pool of cells for all sequences, so one
long conversation can use the cells several short ones would; `llama_memory_seq_cp` inside it
copies no data (the cells gain a second owner), so a copied prefix (a service's persona, a
conversation's history) costs no cells, and a cell is free only when no sequence holds it.
Without it (the default) each sequence has its own region and a copy duplicates the cells; the
count below then simply adds up what each holds.

llama.cpp does not report how many cells are in use, so this module keeps the count itself. Each
sequence's cells are a list of segments (id, start, end) covering positions [0, len). A segment is
a run of cells one sequence decoded; a copy shares the donor's segments up to the copied length;
truncating cuts them. Every holder of a segment holds a prefix of it (copies and truncations both
keep prefixes), so the cells in use are, per segment, the longest part any holder still holds.

Pure Python apart from the three native calls it is handed, so it is testable without a model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


class KVMemory(Protocol):
    def truncate(self, seq_id: int, keep: int) -> bool: ...
    def copy_prefix(self, src: int, dst: int, length: int) -> bool: ...


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence id and what its cells hold, kept after a request ends so that the
    next request with the same prefix (a multi-turn conversation resending its history, or a
    service's persona) skips it."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in the pool, in order
    segments: list[list[int]] = field(default_factory=list)  # [segment id, start, end), contiguous from 0
    adapter: str | None = None  # the KV of one adapter is no prefix for another
    last_used: float = 0.0
    busy: bool = False
    own_segment: int | None = None  # the segment this slot extends when it decodes

    def __len__(self) -> int:
        return len(self.cached)


class KVPool:
    def __init__(self, n_cells: int, n_slots: int, memory: KVMemory, shared: bool = True) -> None:
        self.n_cells = n_cells
        self.shared = shared
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._memory = memory
        self._segment_ids = itertools.count(1)

    # -- accounting ---------------------------------------------------------------------------

    def used_cells(self) -> int:
        longest: dict[int, int] = {}
        for slot in self.slots:
            for segment, start, end in slot.segments:
                if end - start > longest.get(segment, 0):
                    longest[segment] = end - start
        return sum(longest.values())

    def cached_cells(self) -> int:
        """Cells that only idle slots hold: freed (by eviction) when a request needs them."""
        busy_longest: dict[int, int] = {}
        for slot in self.slots:
            if slot.busy:
                for segment, start, end in slot.segments:
                    busy_longest[segment] = max(busy_longest.get(segment, 0), end - start)
        idle_only: dict[int, int] = {}
        for slot in self.slots:
            if not slot.busy:
                for segment, start, end in slot.segments:
                    extra = (end - start) - busy_longest.get(segment, 0)
                    if extra > idle_only.get(segment, 0):
                        idle_only[segment] = extra
        return sum(idle_only.values())

    # -- changes (each mirrors one native call) -----------------------------------------------

    def extend(self, slot: Slot, tokens: list[int]) -> None:
        """`tokens` were just decoded into `slot` at the next positions."""
        if not tokens:
            return
        start = len(slot.cached)
        slot.cached.extend(tokens)
        if slot.own_segment is not None and slot.segments and slot.segments[-1][0] == slot.own_segment:
            slot.segments[-1][2] = len(slot.cached)
        else:
            slot.own_segment = next(self._segment_ids)
            slot.segments.append([slot.own_segment, start, len(slot.cached)])

    def truncate(self, slot: Slot, keep: int) -> bool:
        """Drop the slot's cells from position `keep` on. False if llama.cpp refused a partial cut
        (then the slot is wiped)."""
        keep = max(0, min(keep, len(slot.cached)))
        ok = True
        if keep < len(slot.cached) or keep == 0:
            ok = self._memory.truncate(slot.seq_id, keep)
            if not ok:
                self._memory.truncate(slot.seq_id, 0)
                keep = 0
        self._cut(slot, keep)
        return ok

    def copy_prefix(self, donor: Slot, slot: Slot, length: int) -> None:
        """Share the donor's first `length` cells with `slot` (which is emptied first)."""
        length = min(length, len(donor.cached))
        self.truncate(slot, 0)
        if length <= 0:
            return
        if not self._memory.copy_prefix(donor.seq_id, slot.seq_id, length):
            self._memory.truncate(slot.seq_id, 0)
            return  # llama.cpp refused: the slot stays empty and prefills the whole prompt
        slot.cached = donor.cached[:length]
        if self.shared:
            slot.segments = [[s, a, min(b, length)] for s, a, b in donor.segments if a < length]
        else:  # copied into the slot's own region: its own cells
            slot.segments = [[next(self._segment_ids), 0, length]]

    def evict_idle(self, needed: int, keep: Callable[[Slot], bool] = lambda slot: False) -> None:
        """Wipe idle slots, least recently used first, until `needed` cells are free (or none is left)."""
        for slot in sorted((s for s in self.slots if not s.busy and s.cached), key=lambda s: s.last_used):
            if self.n_cells - self.used_cells() >= needed:
                return
            if not keep(slot):
                self.truncate(slot, 0)

    def _cut(self, slot: Slot, keep: int) -> None:
        del slot.cached[keep:]
        segments = [[s, a, min(b, keep)] for s, a, b in slot.segments if a < keep]
        slot.segments = segments
        slot.own_segment = None  # new cells after a cut are new cells, even at the same positions


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    if n < 64:
        i = 1
        while i < n and a[i] == b[i]:
            i += 1
        return i
    # Long prompts against every slot: compare in C, not token by token.
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if differ.size else n
