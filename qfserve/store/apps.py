"""Apps: the callers. Each has an API Key / Secret Key pair, an IAM Access Key / Secret Access Key pair,
and a v2 API key (`bce-v3/ALTAK-…/…`, sent as `Authorization: Bearer …`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from dataclasses import dataclass

from qfserve.store.db import Store


@dataclass(frozen=True)
class App:
    id: int
    name: str
    api_key: str
    access_key: str
    all_services: bool
    created_at: int


@dataclass(frozen=True)
class AppCredentials:
    """Shown once, at creation or rotation."""

    app: App
    secret_key: str
    secret_access_key: str
    v2_api_key: str = ""

    def as_dict(self) -> dict:
        return {
            "name": self.app.name,
            "api_key": self.app.api_key,
            "secret_key": self.secret_key,
            "access_key": self.app.access_key,
            "secret_access_key": self.secret_access_key,
            "v2_api_key": self.v2_api_key,
        }


class AppExists(ValueError):
    pass


class AppNotFound(LookupError):
    pass


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _row_to_app(row) -> App:
    return App(row["id"], row["name"], row["api_key"], row["access_key"], bool(row["all_services"]), row["created_at"])


def _new_pairs() -> dict:
    return {
        "api_key": secrets.token_hex(12),
        "secret_key": secrets.token_hex(16),
        "access_key": secrets.token_hex(16),
        "secret_access_key": secrets.token_hex(16),
        "v2_api_key": new_v2_key(),
    }


_ALNUM = string.ascii_letters + string.digits


def new_v2_key() -> str:
    """A key in the shape of Qianfan's v2 API keys and IAM bearer tokens: `bce-v3/ALTAK-<21>/<40 hex>`."""
    return f"bce-v3/ALTAK-{''.join(secrets.choice(_ALNUM) for _ in range(21))}/{secrets.token_hex(20)}"


def create_app(store: Store, name: str) -> AppCredentials:
    keys = _new_pairs()
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
            raise AppExists(f"an app named {name!r} already exists")
        conn.execute(
            "INSERT INTO apps (name, api_key, secret_key_hash, access_key, secret_access_key, v2_key_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, keys["api_key"], _hash(keys["secret_key"]), keys["access_key"], keys["secret_access_key"],
             _hash(keys["v2_api_key"]), int(time.time())),
        )
    return AppCredentials(get_app(store, name), keys["secret_key"], keys["secret_access_key"], keys["v2_api_key"])


def rotate_app(store: Store, name: str) -> AppCredentials:
    """New credentials (both pairs and the v2 API key); outstanding access and bearer tokens are
    revoked in the same transaction."""
    keys = _new_pairs()
    with store.transaction() as conn:
        row = conn.execute("SELECT id FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        conn.execute(
            "UPDATE apps SET api_key = ?, secret_key_hash = ?, access_key = ?, secret_access_key = ?, v2_key_hash = ?"
            " WHERE id = ?",
            (keys["api_key"], _hash(keys["secret_key"]), keys["access_key"], keys["secret_access_key"],
             _hash(keys["v2_api_key"]), row["id"]),
        )
        conn.execute("DELETE FROM tokens WHERE app_id = ?", (row["id"],))
        conn.execute("DELETE FROM bearer_tokens WHERE app_id = ?", (row["id"],))
    return AppCredentials(get_app(store, name), keys["secret_key"], keys["secret_access_key"], keys["v2_api_key"])


def get_app(store: Store, name: str) -> App:
    row = store.connection().execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise AppNotFound(f"no app named {name!r}")
    return _row_to_app(row)


def list_apps(store: Store) -> list[App]:
    rows = store.connection().execute("SELECT * FROM apps ORDER BY id").fetchall()
    return [_row_to_app(r) for r in rows]


def delete_app(store: Store, name: str) -> None:
    """Deleting an app revokes its tokens and grants at once (ON DELETE CASCADE)."""
    with store.transaction() as conn:
        if conn.execute("DELETE FROM apps WHERE name = ?", (name,)).rowcount == 0:
            raise AppNotFound(f"no app named {name!r}")


def check_client(store: Store, api_key: str, secret_key: str) -> App | None | bool:
    """The token endpoint's check: None for an unknown API Key, False for a wrong Secret Key."""
    row = store.connection().execute("SELECT * FROM apps WHERE api_key = ?", (api_key,)).fetchone()
    if row is None:
        return None
    if not hmac.compare_digest(row["secret_key_hash"], _hash(secret_key)):
        return False
    return _row_to_app(row)


def find_by_access_key(store: Store, access_key: str) -> tuple[App, str] | None:
    """The app and its Secret Access Key, for verifying a bce-auth-v1 signature."""
    row = store.connection().execute("SELECT * FROM apps WHERE access_key = ?", (access_key,)).fetchone()
    if row is None:
        return None
    return _row_to_app(row), row["secret_access_key"]


def find_by_v2_key(store: Store, key: str) -> App | None:
    """The app whose v2 API key this is (compared by hash), or None."""
    row = store.connection().execute("SELECT * FROM apps WHERE v2_key_hash = ?", (_hash(key),)).fetchone()
    return _row_to_app(row) if row else None


def get_app_by_id(store: Store, app_id: int) -> App | None:
    row = store.connection().execute("SELECT * FROM apps WHERE id = ?", (app_id,)).fetchone()
    return _row_to_app(row) if row else None


def grant(store: Store, name: str, api_path: str) -> None:
    """Restrict the app to granted services (if it wasn't yet) and grant this one."""
    with store.transaction() as conn:
        row = conn.execute("SELECT id FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        conn.execute("UPDATE apps SET all_services = 0 WHERE id = ?", (row["id"],))
        conn.execute("INSERT OR IGNORE INTO grants (app_id, api_path) VALUES (?, ?)", (row["id"], api_path))


def revoke(store: Store, name: str, api_path: str) -> None:
    with store.transaction() as conn:
        row = conn.execute("SELECT id FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        conn.execute("UPDATE apps SET all_services = 0 WHERE id = ?", (row["id"],))
        conn.execute("DELETE FROM grants WHERE app_id = ? AND api_path = ?", (row["id"], api_path))


def allow_all(store: Store, name: str) -> None:
    with store.transaction() as conn:
        if conn.execute("UPDATE apps SET all_services = 1 WHERE name = ?", (name,)).rowcount == 0:
            raise AppNotFound(f"no app named {name!r}")
        conn.execute("DELETE FROM grants WHERE app_id = (SELECT id FROM apps WHERE name = ?)", (name,))


def granted_paths(store: Store, app_id: int) -> list[str]:
    rows = store.connection().execute("SELECT api_path FROM grants WHERE app_id = ? ORDER BY api_path", (app_id,))
    return [r["api_path"] for r in rows]


def may_call(store: Store, app: App, api_path: str) -> bool:
    if app.all_services:
        return True
    row = store.connection().execute(
        "SELECT 1 FROM grants WHERE app_id = ? AND api_path = ?", (app.id, api_path)
    ).fetchone()
    return row is not None
