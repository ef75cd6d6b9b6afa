"""Evasion-resistant text normalisation for lexicon matching, with a map back to the original text.

Normalisation is strictly **per character**: every original character maps to a string of zero
or more normalised characters, independent of its neighbours. That gives two properties the
moderation layer relies on:

* ``normalise(a + b) == normalise(a) + normalise(b)`` — so streamed text can be normalised
  incrementally and a term split across two chunks is found exactly as in the whole text;
* the whole mapping fits in one ``str.translate`` table, so normalising runs in C. The map from
  normalised positions back to original positions (:class:`Positions`) is only computed when a
  term actually matched.

The ``default`` pipeline, applied to each character:

1. NFKC — full-width forms (``ＡＢＣ`` → ``ABC``), circled digits/letters (``①`` → ``1``,
   ``Ⓐ`` → ``A``), compatibility ideographs, ligatures;
2. case folding (``str.casefold``), then NFKC again;
3. traditional → simplified Chinese, character by character (the single-character table of
   OpenCC's ``t2s`` data, read from ``opencc-python-reimplemented``; phrase-level conversions
   are not used since they cannot keep a per-character index map);
4. dropping everything that is not a letter, digit or spacing mark: punctuation (P*), symbols
   (S*), separators / spaces (Z*), control, format, zero-width, surrogate and private-use
   characters (Cc, Cf, Cs, Co), non-spacing and enclosing combining marks (Mn, Me), plus a few "invisible
   letters" (Hangul fillers).

The ``strict`` pipeline does all of the above and additionally strips diacritics (NFKD, drop
combining marks: ``café`` → ``cafe``), folds common Cyrillic/Greek look-alikes to Latin
(``сех`` in Cyrillic → ``cex``) and reads leetspeak (``0→o 1→i 3→e 4→a 5→s 7→t 8→b @→a $→s``).
"""

from __future__ import annotations

import logging
import os
import threading
import unicodedata
from bisect import bisect_right

log = logging.getLogger("qfserve.safety")

# Code point ranges scanned to build the tables; characters outside stay unchanged
# (planes 4–13 are unassigned, 15–16 are private use).
_SCAN_RANGES = ((0, 0x40000), (0xE0000, 0xE1000))
_DROP_CATEGORIES = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",
                              "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp",
                              "Cc", "Cf", "Cs", "Co", "Mn", "Me"})
# Unassigned code points (Cn) are kept as they are: they render visibly (as boxes), and leaving
# them out of the tables saves ~8 MB per table.
# Letters (Lo) that render as blank space.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")

_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "ɡ": "g", "ӏ": "l",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    # leetspeak
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
}

POLICY_TABLES = ("default", "strict")

_lock = threading.Lock()
_t2s: dict[str, str] | None = None
_tables: dict[str, dict[int, str]] = {}


def _load_t2s() -> dict[str, str]:
    """Single-character traditional → simplified map from OpenCC's TSCharacters data."""
    global _t2s
    if _t2s is not None:
        return _t2s
    table: dict[str, str] = {}
    try:
        import opencc  # opencc-python-reimplemented

        path = os.path.join(os.path.dirname(opencc.__file__), "dictionary", "TSCharacters.txt")
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2:
                    continue
                src, dst = parts[0], parts[1].split(" ")[0]
                if len(src) == 1 and len(dst) == 1 and src != dst:
                    table[src] = dst
    except Exception as e:  # pragma: no cover - depends on the environment
        log.error("safety: traditional→simplified table unavailable (%s); matching without it", e)
    _t2s = table
    return table


def _norm_default(c: str, t2s: dict[str, str]) -> str:
    try:
        s = unicodedata.normalize("NFKC", c)
        s = unicodedata.normalize("NFKC", s.casefold())
    except Exception:  # lone surrogates and the like
        return ""
    out = []
    for ch in s:
        ch = t2s.get(ch, ch)
        if ch in _INVISIBLE_LETTERS or unicodedata.category(ch) in _DROP_CATEGORIES:
            continue
        out.append(ch)
    return "".join(out)


def _norm_strict(c: str, t2s: dict[str, str]) -> str:
    try:
        s = unicodedata.normalize("NFKC", c)
        s = unicodedata.normalize("NFKC", s.casefold())
    except Exception:
        return ""
    out = []
    for ch in s:
        ch = t2s.get(ch, ch)
        if ch in _CONFUSABLES:
            out.append(_CONFUSABLES[ch])
            continue
        for d in unicodedata.normalize("NFKD", ch):
            d = _CONFUSABLES.get(d, d)
            if d in _INVISIBLE_LETTERS or unicodedata.category(d) in _DROP_CATEGORIES:
                continue
            out.append(d)
    return "".join(out)


def _build_table(kind: str) -> dict[int, str]:
    t2s = _load_t2s()
    fn = _norm_strict if kind == "strict" else _norm_default
    table: dict[int, str] = {}
    category = unicodedata.category
    is_nfkc = unicodedata.is_normalized
    for lo, hi in _SCAN_RANGES:
        for cp in range(lo, hi):
            c = chr(cp)
            # Fast skip for the common case: an unchanged letter/digit.
            if (kind == "default" and category(c)[0] in "LN" and c not in t2s
                    and c not in _INVISIBLE_LETTERS and is_nfkc("NFKC", c) and c.casefold() == c):
                continue
            r = fn(c, t2s)
            if r != c:
                table[cp] = r
    return table


def table(kind: str = "default") -> dict[int, str]:
    """The ``str.translate`` table for a pipeline (built once per process, ~1 s, thread-safe)."""
    t = _tables.get(kind)
    if t is None:
        if kind not in POLICY_TABLES:
            raise ValueError(f"unknown normalisation {kind!r}")
        with _lock:
            t = _tables.get(kind)
            if t is None:
                t = _build_table(kind)
                _tables[kind] = t
    return t


def normalise(text: str, kind: str = "default") -> str:
    """Normalised form of ``text`` (see the module docstring)."""
    return text.translate(table(kind))


def normalise_char(c: str, tbl: dict[int, str]) -> str:
    return tbl.get(ord(c), c)


class Positions:
    """Maps positions in ``text.translate(tbl)`` back to positions in ``text``.

    Built lazily in blocks: the constructor only normalises fixed-size blocks to get their
    normalised offsets (in C); :meth:`orig` walks one block in Python.
    """

    BLOCK = 64

    def __init__(self, text: str, tbl: dict[int, str]):
        self.text = text
        self.tbl = tbl
        starts = []
        acc = 0
        b = self.BLOCK
        for i in range(0, len(text), b):
            starts.append(acc)
            acc += len(text[i:i + b].translate(tbl))
        self.starts = starts
        self.length = acc

    def orig(self, j: int) -> int:
        """Index in the original text of the character that produced normalised char ``j``.

        ``j == length`` (one past the end) maps to ``len(text)``.
        """
        if j >= self.length:
            return len(self.text)
        k = bisect_right(self.starts, j) - 1
        acc = self.starts[k]
        text, tbl = self.text, self.tbl
        i = k * self.BLOCK
        while True:
            c = text[i]
            acc += len(tbl.get(ord(c), c))
            if acc > j:
                return i
            i += 1

    def norm_count(self, i: int) -> int:
        """Number of normalised characters produced by ``text[:i]``."""
        return len(self.text[:i].translate(self.tbl))
