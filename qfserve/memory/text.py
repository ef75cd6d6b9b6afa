"""Text helpers shared by extraction and recall: jieba set up once, sentence splitting, BM25 tokens."""

from __future__ import annotations

import logging
import re

import jieba
import jieba.posseg

# jieba logs its dictionary loading at DEBUG to stderr by default; that is noise in a server log.
jieba.setLogLevel(logging.WARNING)

# Sentence ends. A '.' only counts when a space or the end follows, so "3.5" and "e.g" survive.
_SENTENCE_END = re.compile(r"([。！？!?；;\n]+|\.(?=\s|$))")

_STOPWORDS = frozenset(
    "我 你 您 他 她 它 的 地 得 了 着 过 是 在 吗 呢 吧 啊 呀 哦 和 与 及 也 都 就 还 很 这 那 这个 那个 有 个 一个"
    " 用户 什么 怎么 怎样 哪 哪个 请 帮 帮我 给 我们 你们 他们 让 会 要 想 能 可以 一下 告诉 知道 没有 不 吗 嘛"
    " a an the i me my mine you your he she it its we they is am are was were be been do does did to of"
    " in on at for and or but with what which who whom how when why this that these those can could would"
    " should will please tell about know user user's s 's".split()
)


def sentences(text: str) -> list[tuple[str, str]]:
    """(sentence, the punctuation that ended it) pairs; the ending tells statements from questions."""
    parts = _SENTENCE_END.split(text)
    pairs = []
    for index in range(0, len(parts), 2):
        sentence = parts[index].strip()
        ending = parts[index + 1] if index + 1 < len(parts) else ""
        if sentence:
            pairs.append((sentence, ending))
    return pairs


def pos_words(text: str) -> list[tuple[str, str]]:
    """jieba's (word, part-of-speech flag) pairs: `nr` person name, `ns` place name, `eng` latin word."""
    return [(pair.word, pair.flag) for pair in jieba.posseg.cut(text)]


def _normalize(token: str) -> str:
    token = token.casefold()
    if token.endswith("'s"):
        token = token[:-2]
    # A crude plural/third-person fold, applied to query and memories alike so "lives" meets "live".
    if token.isascii() and len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        token = token[:-1]
    return token


def search_tokens(text: str) -> list[str]:
    """BM25 terms: jieba's search-mode words (so 杭州市 also yields 杭州), minus punctuation and stopwords."""
    tokens = []
    for word in jieba.cut_for_search(text):
        word = word.strip()
        if not word or not any(ch.isalnum() for ch in word):
            continue
        token = _normalize(word)
        if token and token not in _STOPWORDS:
            tokens.append(token)
    return tokens
