"""Access tokens: issued by /oauth/2.0/token, stored as sha256 hashes, valid 30 days."""

from __future__ import annotations

import hashlib
import secrets
import time

from qfserve.store.apps import App, get_app_by_id
from qfserve.store.db import Store

TOKEN_TTL = 30 * 24 * 3600  # The SDK never refreshes early: short-lived tokens would break it.
REFRESH_TTL = 315360000


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store: Store, app: App, ttl: int = TOKEN_TTL, now: float | None = None) -> tuple[str, str, int]:
    """Returns (access_token, refresh_token, expires_at); only the access token's hash is kept.
    An app found through rotated-out credentials (`app.retiring_at`) gets a token revoked with them."""
    now = int(now if now is not None else time.time())
    expires_at = now + ttl
    access = f"24.{secrets.token_hex(16)}.{ttl}.{expires_at}.282335-{app.id}"
    refresh = f"25.{secrets.token_hex(16)}.{REFRESH_TTL}.{now + REFRESH_TTL}.282335-{app.id}"
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO tokens (token_hash, app_id, expires_at, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
            (_hash(access), app.id, expires_at, now, app.retiring_at),
        )
    return access, refresh, expires_at


def lookup_token(store: Store, token: str, now: float | None = None) -> tuple[App, int] | None:
    """The token's app and expiry, or None if unknown or revoked (also once a rotation's grace ended)."""
    row = store.connection().execute(
        "SELECT app_id, expires_at, revoked_at FROM tokens WHERE token_hash = ?", (_hash(token),)
    ).fetchone()
    if row is None:
        return None
    if row["revoked_at"] is not None and row["revoked_at"] <= (now if now is not None else time.time()):
        return None
    app = get_app_by_id(store, row["app_id"])
    return (app, row["expires_at"]) if app else None


# Expired tokens are kept this long before they are purged, so a client still using one hears
# 111 "Access token expired" (and refreshes), not 110 "invalid".
EXPIRED_KEPT = 7 * 24 * 3600


def purge_expired(store: Store, now: float | None = None, keep_expired: int = EXPIRED_KEPT) -> int:
    """Delete tokens expired more than `keep_expired` seconds ago, tokens whose rotation grace has
    ended, and retired credentials past their grace. Returns the tokens deleted."""
    now = int(now if now is not None else time.time())
    with store.transaction() as conn:
        conn.execute("DELETE FROM retired_credentials WHERE valid_until <= ?", (now,))
        return conn.execute("DELETE FROM tokens WHERE expires_at < ? OR revoked_at <= ?",
                            (now - keep_expired, now)).rowcount
