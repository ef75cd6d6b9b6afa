"""Operator lexicon files and the compiled Aho-Corasick matchers.

Deny lexicon, TSV, UTF-8, one entry per line::

    # comment lines and blank lines are ignored
    term<TAB>category<TAB>level          level: 1, 2 or 3

Allow-list: one term per line (further TAB-separated columns are ignored). A deny hit lying
entirely inside an allow-list match is suppressed: with deny ``色情`` and allow ``白色情人节``,
``白色情人节快乐`` is clean but ``白色情人`` still hits.

Terms are normalised with the same pipeline as the text (see :mod:`.normalize`), so the
lexicon may be written in any width, case or script variant. When two entries normalise to the
same key the higher level wins. A category→level map from the operator overrides the file's
level for every term of that category; level 0 there switches a category off.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from . import normalize

LEVELS = (1, 2, 3)


class LexiconError(ValueError):
    """A lexicon file could not be read or has a malformed line (message names file:line)."""


@dataclass(frozen=True)
class Entry:
    term: str          # as written in the file (never logged)
    category: str
    level: int         # level from the file, before overrides

    @property
    def digest(self) -> str:
        """Short hash for logs: identifies the term without printing it."""
        return hashlib.sha256(self.term.encode("utf-8")).hexdigest()[:12]


def read_deny(path: str) -> list[Entry]:
    out: list[Entry] = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise LexiconError(f"{path}: cannot read lexicon: {e}") from e
    for no, raw in enumerate(lines, 1):
        line = raw.strip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise LexiconError(f"{path}:{no}: expected term<TAB>category<TAB>level, got {len(parts)} column(s)")
        term, category, level_s = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if not term or not category:
            raise LexiconError(f"{path}:{no}: empty term or category")
        try:
            level = int(level_s)
        except ValueError:
            raise LexiconError(f"{path}:{no}: level must be 1, 2 or 3, got {level_s!r}") from None
        if level not in LEVELS:
            raise LexiconError(f"{path}:{no}: level must be 1, 2 or 3, got {level}")
        out.append(Entry(term, category, level))
    return out


def read_allow(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise LexiconError(f"{path}: cannot read allow-list: {e}") from e
    out = []
    for raw in lines:
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        term = raw.split("\t")[0].strip()
        if term:
            out.append(term)
    return out


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("0" <= c <= "9")


def as_bytes(s: str) -> str:
    """UTF-8 of ``s`` as a latin-1 str: the form the automata are built on and run over.

    pyahocorasick scans a node's children linearly; over raw CJK text the root of a 10k-term
    lexicon has thousands of children and matching is ~50x slower than over UTF-8 units, where
    no node has more than 256. A match of whole UTF-8 terms always falls on character boundaries.
    """
    return s if s.isascii() else s.encode("utf-8").decode("latin-1")


@dataclass(frozen=True)
class Term:
    """A compiled deny term (value stored in the automaton)."""
    length: int          # normalised length
    level: int           # effective level (after category override)
    category: str
    word_left: bool      # starts with [a-z0-9]: needs a word boundary before it (default mode)
    word_right: bool     # ends with [a-z0-9]: needs a word boundary after it
    digest: str
    blen: int = 0        # UTF-8 length of the normalised term (the automata run on UTF-8, see below)
    allow_tail: int = 0  # >0: some allow term contains this term; a hit at normalised start s
                         # is only decided once the text reaches s + allow_tail


@dataclass
class Matcher:
    """Compiled automata for one normalisation pipeline."""
    kind: str
    table: dict[int, str]
    deny: object | None = None        # ahocorasick.Automaton
    allow: object | None = None
    max_deny: int = 0
    max_allow: int = 0
    n_terms: int = 0
    n_allow: int = 0
    skipped: list[str] = field(default_factory=list)


def compile_matcher(kind: str, entries: list[Entry], allow: list[str],
                    category_levels: dict[str, int]) -> Matcher:
    import ahocorasick  # pyahocorasick; imported lazily so an empty moderator needs nothing

    tbl = normalize.table(kind)
    m = Matcher(kind=kind, table=tbl)
    best: dict[str, Term] = {}
    for e in entries:
        level = category_levels.get(e.category, e.level)
        if level <= 0:
            continue
        key = e.term.translate(tbl)
        if not key:
            m.skipped.append(e.digest)
            continue
        t = Term(len(key), min(level, 3), e.category, _is_word_char(key[0]), _is_word_char(key[-1]),
                 e.digest, len(key.encode("utf-8")))
        old = best.get(key)
        if old is None or t.level > old.level:
            best[key] = t
    keys = {t.translate(tbl) for t in allow}
    keys.discard("")
    if keys and best:
        # For each deny term, how far past its start an allow term containing it can reach.
        probe = ahocorasick.Automaton()
        for key in best:
            probe.add_word(key, key)
        probe.make_automaton()
        relevant = set()
        for akey in keys:
            for end, key in probe.iter(akey):
                relevant.add(akey)
                tail = len(akey) - (end - len(key) + 1)
                t = best[key]
                if tail > t.allow_tail:
                    best[key] = replace(t, allow_tail=tail)
        keys = relevant  # allow terms containing no deny term can never suppress anything
    if best:
        a = ahocorasick.Automaton()
        for key, t in best.items():
            a.add_word(as_bytes(key), t)
        a.make_automaton()
        m.deny = a
        m.max_deny = max(t.length for t in best.values())
        m.n_terms = len(best)
    if keys and best:
        a = ahocorasick.Automaton()
        for key in keys:
            a.add_word(as_bytes(key), (len(key), len(key.encode("utf-8"))))
        a.make_automaton()
        m.allow = a
        m.max_allow = max(len(k) for k in keys)
        m.n_allow = len(keys)
    return m
