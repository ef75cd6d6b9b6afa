"""Ids as Qianfan makes them: `as-` followed by 10 characters of [a-z0-9]."""

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def request_id() -> str:
    return "as-" + "".join(secrets.choice(_ALPHABET) for _ in range(10))
