"""One-time sign-in links (printed by `qfserve console`) and the browser sessions they open.

The link's token and the session cookie are random 256-bit values; the database keeps only their
sha256, so reading the database does not let anyone in. A link works once, within SIGNIN_TTL.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote

from qfserve.store import console as console_store
from qfserve.store.db import Store

SIGNIN_TTL = 15 * 60
SESSION_TTL = 12 * 3600
COOKIE_NAME = "qfserve_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SIGNIN_PATH = "/console/signin"


def new_signin_link(store: Store, base_url: str, ttl: int = SIGNIN_TTL) -> str:
    token = secrets.token_urlsafe(32)
    console_store.add_signin_token(store, token, ttl)
    return f"{base_url.rstrip('/')}{SIGNIN_PATH}?token={quote(token)}"


def sign_in(store: Store, token: str, ttl: int = SESSION_TTL) -> str | None:
    """A new session's cookie value, or None if the token is unknown, used or expired."""
    if not token or len(token) > 200 or not console_store.consume_signin_token(store, token):
        return None
    session = secrets.token_urlsafe(32)
    console_store.add_session(store, session, secrets.token_urlsafe(32), ttl)
    return session


def session_csrf(store: Store, cookie: str | None) -> str | None:
    """The session's CSRF token when the cookie names a live session, else None."""
    if not cookie or len(cookie) > 200:
        return None
    session = console_store.get_session(store, cookie)
    return session.csrf_token if session else None


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def sign_out(store: Store, cookie: str | None) -> None:
    if cookie:
        console_store.delete_session(store, cookie)
