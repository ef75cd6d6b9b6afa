"""Token bytes in, showable text out: UTF-8 reassembly and stop-string holdback.

Pure Python (no llama_cpp), so it is cheap to test on its own.
"""

from __future__ import annotations

import codecs


class StreamingText:
    """Turns each sampled token's bytes into the text that is safe to release now.

    A token may end in the middle of a UTF-8 character; the incremental decoder keeps those bytes
    until the character completes, so a partial character is never emitted. When the answer ends
    there (cut by max_tokens), the incomplete character is dropped, never shown as U+FFFD.
    Text that could be the start of a stop string is held back until it either completes the stop
    string (then generation ends and the stop string and everything after it is dropped) or stops
    matching.
    """

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        # "replace" only for bytes that can never become a character (a model emitting invalid
        # UTF-8); an unfinished character is held by the decoder and dropped at the end.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False  # a stop string was completed; the caller finishes with "stop"
        self.matched_stop: str | None = None
        self.last_decoded = ""  # the characters the last pushed token completed (for logprobs)

    def push(self, piece: bytes) -> str:
        self.last_decoded = self._decoder.decode(piece)
        text = self._held + self.last_decoded
        self._held = ""
        if not self._stops:
            return text
        match = self._first_stop(text)
        if match is not None:
            cut, self.matched_stop = match
            self.stopped = True
            return text[:cut]
        keep = self._partial_stop_tail(text)
        if keep:
            self._held = text[-keep:]
            return text[:-keep]
        return text

    def text_if(self, piece: bytes) -> str:
        """The characters `piece` would complete if it came next (an alternative token's text):
        bytes of an unfinished character before it count, an unfinished character it leaves does not."""
        pending = self._decoder.getstate()[0]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(pending + piece)

    def flush(self) -> str:
        """At the end of generation: release what was held (it never became a stop string).
        An unfinished UTF-8 character at the very end is dropped."""
        if self.stopped:
            return ""
        self._decoder.reset()  # drops only the bytes of an unfinished character
        text, self._held = self._held, ""
        return text

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """Where the earliest stop string starts, and which one it is."""
        found = [(text.find(s), s) for s in self._stops if s in text]
        return min(found) if found else None

    def _partial_stop_tail(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        for size in range(min(len(text), self._longest_stop - 1), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
