"""Lexicon-based moderation of chat input and (streamed) output.

Levels and the wire (spec §4): a :class:`Verdict`'s ``level`` is the response's ``flag``;
``need_clear_history`` is ``level >= 2``; ``ban_round`` is set when ``level >= 2``.

**Rounds** (``ban_round``): round *k* is the *k*-th user message of ``messages``, counted
from 1 (a ``function`` message — the wire allows it where a user message goes — counts as a
user message). The last user message is the current question and is reported as ``-1`` (not
as its number). Hits in ``system`` or ``user_setting`` count as the current question (``-1``).
Only user messages, ``system`` and ``user_setting`` are checked on input (assistant turns are
model output). When several hits share the highest level, the current question wins, otherwise
the latest round.

**Policies** (per service):

* ``off`` — no moderation at all;
* ``default`` — levels from the lexicon (after the operator's category overrides); Latin
  terms (those starting/ending with ``[a-z0-9]`` once normalised) must sit on a word boundary
  of the original text, so ``ass`` does not fire inside ``class``, and a Latin term spread
  over several whitespace-separated words only counts when those are single letters
  (``f o o b a r`` hits ``foobar``, ``foo bar`` does not); CJK terms match anywhere;
* ``strict`` — every hit counts at least level 2 (so nothing is merely masked: the chat is
  closed), the wider ``strict`` normalisation is used (diacritics stripped, Cyrillic/Greek
  look-alikes and leetspeak folded, see :mod:`.normalize`), and Latin terms match inside words.

**Output** (:class:`OutputFilter`): text is held back until it can no longer be the start of a
lexicon term: the last ``holdback`` (= longest normalised deny term − 1) normalised characters,
mapped back to the original text; a deny hit that could still be covered by a longer
allow-list match, or whose word boundary depends on the next character, is held as well.
Level-1 terms are masked with one ``*`` per original character; at level >= 2 the filter stops:
the text before the term is returned with the verdict and nothing after it is ever released.

**Events**: every hit that takes effect (after allow-list and policy) increments
``qfserve_moderation_events_total{category,level,direction}`` once, and is logged on the
``qfserve.safety`` logger with category, level, term length and a short hash of the lexicon
term — never the user's or the model's text.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass

from . import metrics
from .lexicon import Entry, LexiconError, Matcher, Term, as_bytes, compile_matcher, read_allow, read_deny
from .normalize import Positions

log = logging.getLogger("qfserve.safety")

POLICIES = ("off", "default", "strict")
_USER_ROLES = ("user", "function")


@dataclass(frozen=True)
class Verdict:
    level: int = 0                  # 0..3 → the wire's `flag`
    category: str | None = None
    ban_round: int | None = None    # -1 current question; set when level >= 2

    @property
    def need_clear_history(self) -> bool:
        return self.level >= 2


SAFE = Verdict()


@dataclass(slots=True)
class Hit:
    os: int          # original start (inclusive)
    oe: int          # original end (exclusive)
    level: int       # effective level
    term: Term
    decided: bool    # False: more text could still change it (allow-list / word boundary)


def _word(c: str) -> bool:
    return ("a" <= c <= "z") or ("0" <= c <= "9")


def _scan(m: Matcher, text: str, norm: str, final: bool, floor: int, boundaries: bool,
          pos: Positions | None = None) -> tuple[list[Hit], Positions | None]:
    """All effective deny hits in ``text`` (whose normalised form is ``norm``)."""
    bn = as_bytes(norm)
    raw = list(m.deny.iter(bn))
    if not raw:
        return [], pos
    tbl = m.table
    if pos is None:
        pos = Positions(text, tbl)
    n = len(norm)
    araw = list(m.allow.iter(bn)) if m.allow is not None else ()
    if bn is norm:
        raw = [(end - t.blen + 1, t) for end, t in raw]
        spans = [(end - b + 1, end - b + 1 + ln) for end, (ln, b) in araw]
    else:  # byte offsets → character offsets, in one pass over the text
        starts = [(end - t.blen + 1, t) for end, t in raw]
        astarts = [(end - b + 1, ln) for end, (ln, b) in araw]
        conv, pb, pc = {}, 0, 0
        for b in sorted({b for b, _ in starts} | {b for b, _ in astarts}):
            pc += len(bn[pb:b].encode("latin-1").decode("utf-8"))
            pb = b
            conv[b] = pc
        raw = [(conv[b], t) for b, t in starts]
        spans = [(conv[b], conv[b] + ln) for b, ln in astarts]
    hits = []
    for s, t in raw:
        e = s + t.length
        if spans and any(a <= s and e <= b for a, b in spans):
            continue
        decided = final or t.allow_tail == 0 or s + t.allow_tail <= n
        os_ = pos.orig(s)
        oe = pos.orig(e - 1) + 1
        if boundaries:
            if t.word_left:
                if s > 0 and pos.orig(s - 1) == os_:
                    prev = _word(norm[s - 1])          # same original char (e.g. "㎏")
                elif os_ > 0:
                    r = tbl.get(ord(text[os_ - 1]), text[os_ - 1])
                    prev = bool(r) and _word(r[-1])
                else:
                    prev = False
                if prev:
                    continue
            if t.word_right:
                if e < n and pos.orig(e) == oe - 1:
                    nxt = _word(norm[e])
                elif oe < len(text):
                    r = tbl.get(ord(text[oe]), text[oe])
                    nxt = bool(r) and _word(r[0])
                else:
                    nxt = False
                    if not final:
                        decided = False
                if nxt:
                    continue
            if oe - os_ > t.length and (t.word_left or t.word_right):
                span = text[os_:oe]
                if any(c.isspace() for c in span):
                    # Spread over several words: only letter-spacing ("f o o b a r") counts,
                    # not ordinary words that happen to concatenate ("foo bar").
                    if any(len(p.translate(tbl)) > 1 for p in span.split()):
                        continue
        hits.append(Hit(os_, oe, max(t.level, floor), t, decided))
    return hits, pos


@dataclass(frozen=True)
class _State:
    default: Matcher | None = None
    strict: Matcher | None = None
    n_terms: int = 0


class Moderator:
    """Lexicon moderator. Cheap to call when no lexicon is configured.

    Thread-safe: :meth:`reload` swaps a compiled, immutable state in one assignment; checks and
    output filters take a snapshot of the state when they start.
    """

    def __init__(self, lexicons: list[str] | None = None, allow: str | None = None,
                 category_levels: dict[str, int] | None = None):
        self.lexicons = list(lexicons or [])
        self.allow = allow
        self.category_levels = dict(category_levels or {})
        self.last_reload_error: str | None = None
        self._reload_lock = threading.Lock()
        self._state = _State()

    @classmethod
    def from_files(cls, lexicons: list[str], allow: str | None,
                   category_levels: dict[str, int] | None = None) -> "Moderator":
        """Load lexicons now; raises :class:`LexiconError` on a missing or malformed file."""
        m = cls(lexicons, allow, category_levels)
        m._state = m._load()
        return m

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Moderator":
        """``QFSERVE_SAFETY_LEXICON`` (paths joined by ``os.pathsep``), ``QFSERVE_SAFETY_ALLOW``,
        ``QFSERVE_SAFETY_CATEGORY_LEVELS`` (``cat=level,cat=level``)."""
        env = os.environ if environ is None else environ
        lex = [p for p in env.get("QFSERVE_SAFETY_LEXICON", "").split(os.pathsep) if p]
        return cls.from_files(lex, env.get("QFSERVE_SAFETY_ALLOW") or None,
                              parse_category_levels(env.get("QFSERVE_SAFETY_CATEGORY_LEVELS", "")))

    @property
    def enabled(self) -> bool:
        return self._state.default is not None

    @property
    def n_terms(self) -> int:
        return self._state.n_terms

    def _load(self) -> _State:
        entries: list[Entry] = []
        for p in self.lexicons:
            entries.extend(read_deny(p))
        allow = read_allow(self.allow) if self.allow else []
        for c, lv in self.category_levels.items():
            if not isinstance(lv, int) or not 0 <= lv <= 3:
                raise LexiconError(f"category level for {c!r} must be 0..3, got {lv!r}")
        if not entries:
            return _State()
        d = compile_matcher("default", entries, allow, self.category_levels)
        s = compile_matcher("strict", entries, allow, self.category_levels)
        if d.skipped:
            log.warning("safety: %d lexicon term(s) normalise to nothing and were skipped: %s",
                        len(d.skipped), ",".join(d.skipped[:10]))
        if d.deny is None:
            return _State()
        log.info("safety: loaded %d deny term(s) from %d file(s), %d allow term(s)",
                 d.n_terms, len(self.lexicons), d.n_allow)
        return _State(d, s, d.n_terms)

    def reload(self) -> None:
        """Re-read the same files; on failure keep the current lexicon and log the error
        (also kept in :attr:`last_reload_error`)."""
        with self._reload_lock:
            try:
                st = self._load()
            except Exception as e:
                self.last_reload_error = str(e)
                log.error("safety: reload failed, keeping the previous lexicon: %s", e)
                return
            self._state = st
            self.last_reload_error = None

    def _mode(self, policy: str | None) -> tuple[Matcher, int, bool] | None:
        policy = policy or "default"
        if policy not in POLICIES:
            raise ValueError(f"unknown moderation policy {policy!r} (expected one of {POLICIES})")
        st = self._state
        if policy == "off" or st.default is None:
            return None
        if policy == "strict":
            return st.strict, 2, False
        return st.default, 0, True

    def _input_hits(self, messages: list[tuple[str, str]], system: str | None, user_setting: str | None,
                    policy: str) -> list[tuple[int, str, str, Hit]]:
        """(round, source, text, hit) for every effective hit in the checked inputs."""
        mode = self._mode(policy)
        if mode is None:
            return []
        m, floor, boundaries = mode
        tbl = m.table
        sources: list[tuple[int, str, str]] = []
        last_user = max((i for i, (role, _) in enumerate(messages) if role in _USER_ROLES), default=-1)
        k = 0
        for i, (role, content) in enumerate(messages):
            if role not in _USER_ROLES:
                continue
            k += 1
            if isinstance(content, str) and content:
                sources.append((-1 if i == last_user else k, f"messages[{i}]", content))
        for name, extra in (("system", system), ("user_setting", user_setting)):
            if isinstance(extra, str) and extra:
                sources.append((-1, name, extra))
        found: list[tuple[int, str, str, Hit]] = []
        for rnd, name, text in sources:
            hits, _ = _scan(m, text, text.translate(tbl), True, floor, boundaries)
            found.extend((rnd, name, text, h) for h in hits)
        return found

    @staticmethod
    def _verdict(found: list[tuple[int, str, str, Hit]]) -> Verdict:
        if not found:
            return SAFE
        rnd, _, _, best = max(found, key=lambda f: (f[3].level, f[0] == -1, f[0]))
        return Verdict(best.level, best.term.category, rnd if best.level >= 2 else None)

    def check_input(self, messages: list[tuple[str, str]], system: str | None = None,
                    user_setting: str | None = None, policy: str = "default") -> Verdict:
        """Verdict over the user messages, ``system`` and ``user_setting`` (see module doc for rounds)."""
        found = self._input_hits(messages, system, user_setting, policy)
        v = self._verdict(found)
        if not found:
            return v
        for _, _, _, h in found:
            metrics.count(h.term.category, h.level, "input")
        log.log(logging.WARNING if v.level >= 2 else logging.INFO,
                "safety input: flag=%d category=%s ban_round=%s policy=%s hits=%s",
                v.level, v.category, v.ban_round, policy or "default",
                [(h.term.category, h.level, h.term.length, h.term.digest, r) for r, _, _, h in found])
        return v

    def explain_input(self, messages: list[tuple[str, str]], system: str | None = None,
                      user_setting: str | None = None, policy: str = "default") -> tuple[Verdict, list[dict]]:
        """For operators testing a lexicon: the verdict, and each hit with the lexicon term, the text
        it matched and where. Never used on the request path (it prints user text and terms)."""
        found = self._input_hits(messages, system, user_setting, policy)
        terms = {e.digest: e.term for p in self.lexicons for e in read_deny(p)}
        hits = [
            {"term": terms.get(h.term.digest), "matched": text[h.os:h.oe], "source": name, "start": h.os,
             "end": h.oe, "level": h.level, "category": h.term.category}
            for rnd, name, text, h in sorted(found, key=lambda f: (f[1], f[3].os))
        ]
        return self._verdict(found), hits

    def output_filter(self, policy: str = "default") -> "OutputFilter":
        mode = self._mode(policy)
        if mode is None:
            return OutputFilter(None, 0, True)
        return OutputFilter(*mode)


class OutputFilter:
    """Incremental moderation of one generated answer (see module doc).

    ``feed(text)`` → ``(safe_text, verdict_or_None)``: a non-None verdict (level >= 2) means
    stop generating; ``safe_text`` is then what precedes the term. After that, ``feed`` and
    ``finish`` return ``("", verdict)``. ``finish()`` releases the held tail and returns the
    overall verdict (level 1 if anything was masked, else 0).
    """

    def __init__(self, matcher: Matcher | None, floor: int, boundaries: bool):
        self._m = matcher
        self._floor = floor
        self._boundaries = boundaries
        self._buf = ""
        self._sent = 0
        self._stop: Verdict | None = None
        self._level = 0
        self._category: str | None = None
        if matcher is None:
            self._hold = 0
            self._ctx = 0
        else:
            self._hold = max(matcher.max_deny - 1, 0)
            self._ctx = (matcher.max_allow if matcher.allow is not None else 0) + 1

    @property
    def holdback(self) -> int:
        """Normalised characters held back at the end of the stream so far (longest term − 1)."""
        return self._hold

    @property
    def verdict(self) -> Verdict:
        """Overall verdict so far."""
        if self._stop is not None:
            return self._stop
        return Verdict(self._level, self._category) if self._level else SAFE

    @property
    def stopped(self) -> bool:
        return self._stop is not None

    def hides(self, context: str, candidate: str) -> bool:
        """Whether `candidate`, shown right after `context`, would be masked or stopped: some deny
        hit overlaps it. For text that was never streamed, such as a logprob's alternative token.
        Counts and logs nothing."""
        if self._m is None or not candidate:
            return False
        text = context + candidate
        hits, _ = _scan(self._m, text, text.translate(self._m.table), True, self._floor, self._boundaries)
        return any(h.oe > len(context) for h in hits)

    def feed(self, text: str) -> tuple[str, Verdict | None]:
        if self._m is None:
            return text, None
        if self._stop is not None:
            return "", self._stop
        if text:
            self._buf += text
        return self._process(False)

    def finish(self) -> tuple[str, Verdict]:
        if self._m is None:
            return "", SAFE
        if self._stop is not None:
            return "", self._stop
        out, v = self._process(True)
        return out, v if v is not None else self.verdict

    def _process(self, final: bool) -> tuple[str, Verdict | None]:
        m, buf, sent = self._m, self._buf, self._sent
        tbl = m.table
        norm = buf.translate(tbl)
        hits, pos = _scan(m, buf, norm, final, self._floor, self._boundaries)
        hits = [h for h in hits if h.os >= sent]
        stops = [h for h in hits if h.decided and h.level >= 2]
        if stops:
            limit = min(h.os for h in stops)
        elif final or self._hold == 0:
            limit = len(buf)
        else:
            limit = _hold_start(buf, tbl, sent, self._hold)
        # Never release an undecided hit, nor part of a level-1 hit (unless we stop anyway,
        # in which case a level-1 hit overlapping the stop term is masked as far as released).
        changed = True
        while changed:
            changed = False
            for h in hits:
                if h.os < limit and (not h.decided or (h.oe > limit and not stops)):
                    limit = h.os
                    changed = True
        seg = buf[sent:limit]
        masked = [h for h in hits if h.decided and h.level == 1 and h.os < limit]
        if masked:
            chars = list(seg)
            for h in masked:
                for i in range(h.os, min(h.oe, limit)):
                    chars[i - sent] = "*"
                metrics.count(h.term.category, 1, "output")
                log.info("safety output: masked category=%s level=1 len=%d term=%s",
                         h.term.category, h.term.length, h.term.digest)
                if self._level < 1:
                    self._level, self._category = 1, h.term.category
            seg = "".join(chars)
        if stops:
            # The earliest term stops the stream (ties: the highest level): the verdict does not
            # depend on how the text was split into chunks.
            top = min(stops, key=lambda h: (h.os, -h.level))
            for h in stops:
                metrics.count(h.term.category, h.level, "output")
            log.warning("safety output: stopped flag=%d category=%s hits=%s", top.level, top.term.category,
                        [(h.term.category, h.level, h.term.length, h.term.digest) for h in stops])
            self._stop = Verdict(top.level, top.term.category, -1)
            self._buf, self._sent = "", 0
            return seg, self._stop
        if final:
            self._buf, self._sent = "", 0
            return seg, None
        # Keep a little released text as left context (allow-list matches, word boundaries).
        sent = limit
        keep_from = min(_back(buf, tbl, sent, self._ctx, 0), max(sent - 1, 0))
        self._buf = buf[keep_from:]
        self._sent = sent - keep_from
        return seg, None


def _back(buf: str, tbl: dict[int, str], end: int, count: int, floor: int) -> int:
    """Walk back from ``end`` until ``buf[i:end]`` yields ``count`` normalised chars (or ``floor``)."""
    i, acc = end, 0
    while acc < count and i > floor:
        i -= 1
        c = buf[i]
        acc += len(tbl.get(ord(c), c))
    return i


def _hold_start(buf: str, tbl: dict[int, str], sent: int, hold: int) -> int:
    """Original index where the held tail (the last ``hold`` normalised chars) begins.

    Only those chars can still begin a lexicon term: any term starting earlier would already
    be complete in ``buf`` (terms are at most ``hold + 1`` normalised chars long)."""
    i, acc = len(buf), 0
    while acc < hold and i > sent:
        i -= 1
        c = buf[i]
        acc += len(tbl.get(ord(c), c))
    if acc >= hold:
        return i
    # Fewer than `hold` normalised chars are unsent: hold from the first of them; what precedes
    # it (dropped chars only) cannot begin a term and is released.
    i = sent
    while i < len(buf):
        c = buf[i]
        if tbl.get(ord(c), c):
            break
        i += 1
    return i


def parse_category_levels(spec: str) -> dict[str, int]:
    """``"politics=3,ads=1"`` → ``{"politics": 3, "ads": 1}`` (for env vars / CLI flags)."""
    out: dict[str, int] = {}
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        cat, sep, lv = part.rpartition("=")
        if not sep or not cat.strip():
            raise ValueError(f"bad category level {part!r}, expected category=level")
        try:
            level = int(lv)
        except ValueError:
            raise ValueError(f"bad category level {part!r}, expected category=level with level 0-3") from None
        if not 0 <= level <= 3:
            raise ValueError(f"category level must be 0..3, got {part!r}")
        out[cat.strip()] = level
    return out


def install_sighup_reload(moderator: Moderator) -> object | None:
    """Reload ``moderator`` on SIGHUP. Call from the main thread. The reload runs in a
    background thread so the event loop is never blocked by compiling a large lexicon.
    Returns the previous handler, or None where SIGHUP does not exist or when called outside
    the main thread (e.g. an app started by a test client): then only :meth:`Moderator.reload`
    reloads, and a warning is logged."""
    sig = getattr(signal, "SIGHUP", None)
    if sig is None:
        return None
    if threading.current_thread() is not threading.main_thread():
        log.warning("safety: not in the main thread, SIGHUP reload not installed")
        return None

    def _handler(signum, frame):
        log.info("safety: SIGHUP, reloading lexicons")
        threading.Thread(target=moderator.reload, name="safety-reload", daemon=True).start()

    return signal.signal(sig, _handler)
