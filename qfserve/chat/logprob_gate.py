"""Token logprobs leave the server only with the text they belong to, after output moderation.

The engine reports each token's logprob when it samples it, but the token's text may be released
later (a partial UTF-8 character, a possible stop string) or never (a completed stop string), and
the output filter may hold it back, mask it, or stop before it. So each token is placed at the end
of the engine text that its event released (tokens whose event released nothing wait for the next
text, and share its span), and is passed on once the filter has let that much text through:
- a token inside a masked span shows the masked text of its span, and its alternatives are masked;
- an alternative that would complete a deny term after the text before it is masked;
- tokens whose text never passes (past a stop string, or past a term that stopped the answer) are
  never returned.
Masking keeps lengths (one `*` per character), so shown and engine text share offsets.
"""

from __future__ import annotations

from collections import deque

from qfserve.protocol.events import TokenLogprob


def _masked(text: str) -> str:
    return "*" * len(text)


class LogprobGate:
    def __init__(self, output_filter=None) -> None:
        self._filter = output_filter  # an OutputFilter, or None without moderation
        self._engine_text: list[str] = []  # what the engine released, in order
        self._engine_len = 0
        self._shown: list[str] = []  # what left the output filter
        self._shown_len = 0
        self._unplaced: list[TokenLogprob] = []
        self._placed: deque[tuple[int, int, TokenLogprob]] = deque()  # (span start, span end, entry)
        self._engine_cache = ""
        self._shown_cache = ""
        self._last_span = (-1, -1)

    def token(self, entry: TokenLogprob, engine_text: str) -> None:
        """A sampled token's entry, and the text the engine released with its event."""
        self._unplaced.append(entry)
        self.engine_text(engine_text)

    def engine_text(self, text: str) -> None:
        """Engine text released without a token of its own (the final flush)."""
        if not text:
            return
        start = self._engine_len
        self._engine_text.append(text)
        self._engine_len += len(text)
        for entry in self._unplaced:
            self._placed.append((start, self._engine_len, entry))
        self._unplaced.clear()

    def release(self, shown: str) -> tuple[TokenLogprob, ...]:
        """`shown` just left the output filter: the entries whose text it completes."""
        if shown:
            self._shown.append(shown)
            self._shown_len += len(shown)
        out = []
        while self._placed and self._placed[0][1] <= self._shown_len:
            start, end, entry = self._placed.popleft()
            out.append(self._checked(start, end, entry))
        return tuple(out)

    def _checked(self, start: int, end: int, entry: TokenLogprob) -> TokenLogprob:
        engine, shown = self._texts()
        first_of_span, self._last_span = (start, end) != self._last_span, (start, end)
        if shown[start:end] != engine[start:end]:  # the filter masked (part of) this token's text
            # The span's text as shown goes with its first token; tokens sharing it show nothing more.
            return TokenLogprob(shown[start:end] if first_of_span else "", entry.logprob,
                                tuple((_masked(t), lp) for t, lp in entry.top_logprobs))
        if self._filter is None or not entry.top_logprobs:
            return entry
        # A term overlapping an alternative starts at most `holdback` normalised characters before
        # it; normalising drops spaces and punctuation, so look further back in the original text.
        context = engine[max(0, start - max(32, 4 * self._filter.holdback)):start]
        return TokenLogprob(entry.token, entry.logprob, tuple(
            (_masked(t) if self._filter.hides(context, t) else t, lp) for t, lp in entry.top_logprobs))

    def _texts(self) -> tuple[str, str]:
        if len(self._engine_cache) != self._engine_len:
            self._engine_cache = "".join(self._engine_text)
        if len(self._shown_cache) != self._shown_len:
            self._shown_cache = "".join(self._shown)
        return self._engine_cache, self._shown_cache
