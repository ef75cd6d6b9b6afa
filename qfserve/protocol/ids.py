"""Ids as Qianfan makes them: `as-` followed by 10 characters of [a-z0-9]."""

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def request_id() -> str:
    return "as-" + "".join(secrets.choice(_ALPHABET) for _ in range(10))


def call_id() -> str:
    """A function call's id, in OpenAI's style (v2 `tool_calls[].id`); v1 shows none."""
    return "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))
