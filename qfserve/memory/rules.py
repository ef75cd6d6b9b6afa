"""Level-1 extraction: rule-based, fast, no model. Chinese and English patterns over one message."""

from __future__ import annotations

from qfserve.memory.facts import Fact
from qfserve.memory.rules_en import extract_en
from qfserve.memory.rules_zh import extract_zh
from qfserve.memory.text import sentences

MAX_MESSAGE_CHARS = 4000  # facts live in short statements; a pasted document is not about the user


def extract_rules(message: str) -> list[Fact]:
    """Facts the user states about themself in `message`; a later fact for a slot wins within the message."""
    split = sentences(message[:MAX_MESSAGE_CHARS])
    found = extract_zh(split) + extract_en(split)
    by_slot: dict[str, Fact] = {}
    for fact in found:
        by_slot.pop(fact.slot, None)  # re-insert so the dict keeps the order facts were last stated
        by_slot[fact.slot] = fact
    return list(by_slot.values())
