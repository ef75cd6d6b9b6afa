"""Cuts streamed text into clause-sized chunks, as Qianfan's SSE does (qianfan-wire.md §4).

A chunk ends at sentence punctuation, Chinese or Western: 。！？；!?; always, and `.` when whitespace follows
(so "3.14" stays whole), except after a list number at the start of a line ("1. "). When no such point
comes, a long run is cut at the last clause mark (，、：,:) or, failing that, as it is.
"""

from __future__ import annotations

import re

_END = re.compile(r"[。！？；!?;…]+[”’」』）)\"']*|\.(?=\s)|\n\n")
_LIST_NUMBER = re.compile(r"(?:^|\n)[ \t]*\d{1,3}$")
_CLAUSE = re.compile(r"[，、：,:]")


class SentenceSplitter:
    """`first_chunk` sends the first visible text at once, as Qianfan does (its first chunk is often a
    few characters, "以下为您" in the seed): time to first chunk is then time to first token."""

    def __init__(self, max_chars: int = 80, first_chunk: bool = True):
        self.max_chars = max_chars
        self._buffer = ""
        self._waiting_first = first_chunk

    def feed(self, text: str) -> list[str]:
        """Add text; return the chunks now complete."""
        self._buffer += text
        if self._waiting_first and self._buffer.strip():
            self._waiting_first = False
            first, self._buffer = self._buffer, ""
            return [first]
        chunks = []
        start = 0
        while (match := _END.search(self._buffer, start)) is not None:
            # A '.' at the very end of the buffer may yet be followed by a space: it waits (no match).
            if match.group() == "." and _LIST_NUMBER.search(self._buffer, 0, match.start()):
                start = match.end()
                continue
            cut = match.end()
            chunks.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            start = 0
        if len(self._buffer) > self.max_chars:
            marks = [m.end() for m in _CLAUSE.finditer(self._buffer)]
            cut = marks[-1] if marks else len(self._buffer)
            chunks.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
        return chunks

    def flush(self) -> str:
        """What remains at the end of generation."""
        rest, self._buffer = self._buffer, ""
        return rest
