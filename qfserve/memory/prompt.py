"""The memory block appended to the system prompt: delimited, so the model can tell it from instructions."""

from __future__ import annotations

import re
from typing import Sequence

from qfserve.store.memories import Memory

BEGIN = "<user_memory>"
END = "</user_memory>"
SETTING_HEADER = "用户设定 (user profile):"
FACTS_HEADER = "关于用户的记忆 (remembered facts about the user):"
ELLIPSIS = "…"

# Memory text and user_setting come from end users: strip anything that could close the block early
# or open a fake one, so user text can never pose as the server's instructions.
_DELIMITER = re.compile(r"</?\s*user_memory\s*>", re.I)


def _clean(text: str) -> str:
    return " ".join(_DELIMITER.sub("", text).split())


def render(memories: Sequence[Memory], user_setting: str | None, max_chars: int) -> str:
    """The block, at most `max_chars` long; "" when there is nothing to say or no room to say it.

    The caller's user_setting comes first (cut with … if it alone would overflow); then memories in
    the order given, best first, as many as fit whole.
    """
    setting = _clean(user_setting or "")
    facts = [_clean(m.text) for m in memories]
    facts = [f for f in facts if f]
    if not setting and not facts:
        return ""
    lines = [BEGIN]
    frame = len(BEGIN) + 1 + len(END)  # BEGIN, newline, ..., END
    used = frame
    if setting:
        room = max_chars - used - len(SETTING_HEADER) - 2
        if room <= len(ELLIPSIS):
            return ""
        if len(setting) > room:
            setting = setting[: room - len(ELLIPSIS)] + ELLIPSIS
        lines += [SETTING_HEADER, setting]
        used += len(SETTING_HEADER) + len(setting) + 2
    kept = []
    for fact in facts:
        cost = len(fact) + 3 + (0 if kept else len(FACTS_HEADER) + 1)  # "- " + fact + newline
        if used + cost > max_chars:
            break
        kept.append(f"- {fact}")
        used += cost
    if kept:
        lines += [FACTS_HEADER, *kept]
    if len(lines) == 1:
        return ""
    return "\n".join([*lines, END])
