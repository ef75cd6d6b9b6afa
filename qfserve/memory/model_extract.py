"""Level-2 extraction: ask the service's own model for facts the rules missed, and trust little of it.

The model gets one structured prompt and should answer a JSON array of {"category", "fact"}.
A small fine-tuned model often answers something else, so the parse is defensive at every step:
anything that is not that shape is dropped, and a fact survives only if it is grounded in what the
user actually wrote (most of its content words appear in the message), which discards the model's
inventions and any echo of the prompt's own wording. A bad answer therefore adds nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Awaitable, Callable

from qfserve.memory.facts import Fact
from qfserve.memory.text import search_tokens

log = logging.getLogger(__name__)

Generate = Callable[[list[dict]], Awaitable[str]]

MODEL_TIMEOUT_S = 60.0
MAX_MODEL_FACTS = 5
MAX_FACT_CHARS = 120
# The share of a fact's content words that must appear in the user's message.
MIN_GROUNDING = 2 / 3

SINGLE_VALUED = ("name", "age", "occupation", "workplace", "location", "hometown")
CATEGORIES = frozenset(SINGLE_VALUED + ("like", "dislike", "plan", "relation", "other"))
# Names small models use for our categories instead of the ones asked for.
_ALIASES = {
    "job": "occupation", "work": "occupation", "profession": "occupation", "career": "occupation",
    "city": "location", "residence": "location", "address": "location", "home": "location",
    "family": "relation", "pet": "relation", "relationship": "relation",
    "likes": "like", "preference": "like", "hobby": "like", "dislikes": "dislike", "plans": "plan",
}
# A fact must be a sentence about the user, as asked; a bare value ("Boston") says nothing on its own.
_ABOUT_USER = re.compile(r"\buser\b|用户", re.I)

PROMPT = """Extract stable personal facts about the user from the message below: name, age, occupation, \
workplace, location, hometown, likes, dislikes, plans, family and pets. Ignore questions and requests.
Answer with a JSON array only, one object per fact, like [{{"category": "location", "fact": "..."}}].
Categories: {categories}. Write each fact as one short sentence about "the user", in the language \
of the message. If the message states no such fact, answer [].

Message:
\"\"\"{message}\"\"\""""

# Words that say what kind of fact it is rather than what the fact is; a paraphrase may use them
# ("works as a doctor" for "I'm a doctor"), so they don't count for or against grounding.
_FRAME_WORDS = frozenset(
    "user name call live work like love enjoy dislike hate plan from has have year old favorite favourite"
    " 用户 名叫 叫 名字 住 住在 在 喜欢 爱 讨厌 计划 打算 来自 职业 工作 有 岁 最".split()
)


def build_messages(message: str) -> list[dict]:
    categories = ", ".join(sorted(CATEGORIES))
    return [{"role": "user", "content": PROMPT.format(categories=categories, message=message)}]


def _candidates(answer: str) -> list:
    """JSON values the answer might hold: the outermost array, else each {...} object on its own."""
    start, end = answer.find("["), answer.rfind("]")
    if 0 <= start < end:
        try:
            value = json.loads(answer[start:end + 1])
            if isinstance(value, list):
                return value
        except ValueError:
            pass
    found = []
    for chunk in re.findall(r"\{[^{}]*\}", answer):
        try:
            found.append(json.loads(chunk))
        except ValueError:
            continue
    return found


def _grounded(fact: str, message_tokens: set[str]) -> bool:
    words = [t for t in search_tokens(fact) if t not in _FRAME_WORDS]
    if not words:
        return False
    present = sum(1 for t in words if t in message_tokens)
    return present / len(words) >= MIN_GROUNDING


def parse_answer(answer: str, message: str) -> list[Fact]:
    """The facts in a model's answer that are well-formed and grounded in `message`."""
    if not isinstance(answer, str):
        return []
    message_tokens = set(search_tokens(message))
    facts: dict[str, Fact] = {}
    for item in _candidates(answer):
        if not isinstance(item, dict):
            continue
        text, category = item.get("fact"), item.get("category", "other")
        if not isinstance(text, str) or not isinstance(category, str):
            continue
        text, category = " ".join(text.split()), category.strip().lower()
        if not (4 <= len(text) <= MAX_FACT_CHARS) or any(ch in text for ch in "{}[]\"") or text == "...":
            continue
        category = _ALIASES.get(category, category)
        if category not in CATEGORIES:
            category = "other"
        if not _ABOUT_USER.search(text) or not _grounded(text, message_tokens):
            continue
        slot = category if category in SINGLE_VALUED else f"{category}:{text.casefold()}"
        facts.setdefault(slot, Fact(slot, text))
        if len(facts) >= MAX_MODEL_FACTS:
            break
    return list(facts.values())


async def extract_with_model(message: str, generate: Generate) -> list[Fact]:
    """Ask the model; any failure (error, timeout, nonsense) yields no facts, never an exception."""
    try:
        answer = await asyncio.wait_for(generate(build_messages(message)), MODEL_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the model is an untrusted helper here; its failure must not lose level-1 facts
        log.warning("memory extraction by model failed: %r", exc)
        return []
    return await asyncio.to_thread(parse_answer, answer, message)
