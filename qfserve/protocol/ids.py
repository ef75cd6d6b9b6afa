"""Ids as Qianfan makes them: `as-` followed by 10 characters of [a-z0-9]."""

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def _symbols(n: int) -> str:
    """n uniform symbols of the alphabet from one draw of the system's randomness (secrets.choice
    reads it once per symbol: ten system calls for an id every refusal pays for)."""
    value = secrets.randbelow(len(_ALPHABET) ** n)
    symbols = []
    for _ in range(n):
        value, index = divmod(value, len(_ALPHABET))
        symbols.append(_ALPHABET[index])
    return "".join(symbols)


def request_id() -> str:
    return "as-" + _symbols(10)


def call_id() -> str:
    """A function call's id, in OpenAI's style (v2 `tool_calls[].id`); v1 shows none."""
    return "call_" + _symbols(24)
