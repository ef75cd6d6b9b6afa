"""Bearer tokens for the v2 surface: issued by `GET /v1/BCE-BEARER/token`, stored as sha256 hashes.

They are a separate kind from v1 access tokens: a bearer token never works as `?access_token=`,
nor an access token as a bearer.
"""

from __future__ import annotations

import hashlib
import time

from qfserve.store.apps import App, get_app_by_id, new_v2_key
from qfserve.store.db import Store

MAX_TTL = 30 * 24 * 3600


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_bearer_token(store: Store, app: App, ttl: int, now: float | None = None) -> tuple[str, int, int]:
    """Returns (token, created_at, expires_at); only the token's hash is kept."""
    created = int(now if now is not None else time.time())
    token = new_v2_key()
    with store.transaction() as conn:
        conn.execute("DELETE FROM bearer_tokens WHERE app_id = ? AND expires_at < ?", (app.id, created))
        conn.execute(
            "INSERT INTO bearer_tokens (token_hash, app_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
            (_hash(token), app.id, created + ttl, created),
        )
    return token, created, created + ttl


def lookup_bearer_token(store: Store, token: str) -> tuple[App, int] | None:
    """The token's app and expiry, or None if unknown or revoked."""
    row = store.connection().execute(
        "SELECT app_id, expires_at FROM bearer_tokens WHERE token_hash = ?", (_hash(token),)
    ).fetchone()
    if row is None:
        return None
    app = get_app_by_id(store, row["app_id"])
    return (app, row["expires_at"]) if app else None
