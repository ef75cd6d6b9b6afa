"""Apps: the callers. Each has an API Key / Secret Key pair, an IAM Access Key / Secret Access Key pair,
and a v2 API key (`bce-v3/ALTAK-…/…`, sent as `Authorization: Bearer …`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from dataclasses import dataclass, replace

from qfserve.store.db import Store


@dataclass(frozen=True)
class App:
    id: int
    name: str
    api_key: str
    access_key: str
    all_services: bool
    created_at: int
    qps: int = 0  # requests per second over all services; 0: unlimited
    daily_requests: int = 0  # requests per day (quota time zone); 0: unlimited
    # Set when the app was found through credentials retired by `app rotate`: tokens issued
    # with them are revoked when the grace period ends, at this unix time.
    retiring_at: int | None = None


@dataclass(frozen=True)
class AppCredentials:
    """Shown once, at creation or rotation."""

    app: App
    secret_key: str
    secret_access_key: str
    v2_api_key: str = ""
    old_valid_until: int | None = None  # after a rotation with a grace period: when the old ones stop

    def as_dict(self) -> dict:
        found = {
            "name": self.app.name,
            "api_key": self.app.api_key,
            "secret_key": self.secret_key,
            "access_key": self.app.access_key,
            "secret_access_key": self.secret_access_key,
            "v2_api_key": self.v2_api_key,
        }
        if self.old_valid_until is not None:
            found["old_credentials_valid_until"] = self.old_valid_until
        return found


class AppExists(ValueError):
    pass


class AppNotFound(LookupError):
    pass


class GrantError(LookupError):
    """A grant that names no service, or a revoke of a grant the app does not hold."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _row_to_app(row) -> App:
    return App(row["id"], row["name"], row["api_key"], row["access_key"], bool(row["all_services"]), row["created_at"],
               row["qps"], row["daily_requests"])


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


def create_app(store: Store, name: str, *, qps: int = 0, daily_requests: int = 0) -> AppCredentials:
    _check_quotas(qps, daily_requests)
    keys = _new_pairs()
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
            raise AppExists(f"an app named {name!r} already exists")
        # Ids are never reused (a deleted app's rate-limit windows and token suffix must not carry over):
        # the next one comes from the high-water mark, moved in this transaction.
        (app_id,) = conn.execute(
            "UPDATE app_id_high_water SET last_id = last_id + 1 WHERE id = 1 RETURNING last_id").fetchone()
        conn.execute(
            "INSERT INTO apps (id, name, api_key, secret_key_hash, access_key, secret_access_key, v2_key_hash,"
            " created_at, qps, daily_requests) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (app_id, name, keys["api_key"], _hash(keys["secret_key"]), keys["access_key"],
             store.secrets.seal(keys["secret_access_key"]), _hash(keys["v2_api_key"]), int(time.time()), qps,
             daily_requests),
        )
    return AppCredentials(get_app(store, name), keys["secret_key"], keys["secret_access_key"], keys["v2_api_key"])


# ---- quotas -------------------------------------------------------------------------------------


def _check_quotas(qps: int | None, daily_requests: int | None) -> None:
    for label, value in (("qps", qps), ("daily requests", daily_requests)):
        if value is not None and value < 0:
            raise ValueError(f"{label} must be 0 (unlimited) or more")


def set_quotas(store: Store, name: str, *, qps: int | None = None, daily_requests: int | None = None) -> App:
    """Change the quotas given (None leaves one as it is); a running server applies them from its next request."""
    _check_quotas(qps, daily_requests)
    with store.transaction() as conn:
        row = conn.execute("SELECT id FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        conn.execute(
            "UPDATE apps SET qps = COALESCE(?, qps), daily_requests = COALESCE(?, daily_requests) WHERE id = ?",
            (qps, daily_requests, row["id"]),
        )
    return get_app(store, name)


def rotate_app(store: Store, name: str, grace: int = 0, now: float | None = None) -> AppCredentials:
    """New credential pairs. With `grace` seconds, the old pairs and the tokens issued so far stay
    valid that long (so clients can switch without an outage); with 0, they end at once, together
    with the pairs retired by earlier rotations."""
    if grace < 0:
        raise ValueError("the grace period cannot be negative")
    now = int(now if now is not None else time.time())
    keys = _new_pairs()
    until = now + grace if grace else None
    with store.transaction() as conn:
        row = conn.execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        if until is None:
            conn.execute("DELETE FROM retired_credentials WHERE app_id = ?", (row["id"],))
            conn.execute("DELETE FROM tokens WHERE app_id = ?", (row["id"],))
            conn.execute("DELETE FROM bearer_tokens WHERE app_id = ?", (row["id"],))
        else:
            conn.execute(
                "INSERT INTO retired_credentials (app_id, api_key, secret_key_hash, access_key, secret_access_key,"
                " v2_key_hash, valid_until) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row["id"], row["api_key"], row["secret_key_hash"], row["access_key"], row["secret_access_key"],
                 row["v2_key_hash"], until),
            )
            conn.execute("UPDATE tokens SET revoked_at = ? WHERE app_id = ? AND (revoked_at IS NULL OR revoked_at > ?)",
                         (until, row["id"], until))
            # Bearer tokens keep their own (shorter) expiry, capped at the end of the grace.
            conn.execute("UPDATE bearer_tokens SET expires_at = CASE WHEN expires_at > ? THEN ? ELSE expires_at END"
                         " WHERE app_id = ?", (until, until, row["id"]))
        conn.execute(
            "UPDATE apps SET api_key = ?, secret_key_hash = ?, access_key = ?, secret_access_key = ?, v2_key_hash = ?"
            " WHERE id = ?",
            (keys["api_key"], _hash(keys["secret_key"]), keys["access_key"], store.secrets.seal(keys["secret_access_key"]),
             _hash(keys["v2_api_key"]), row["id"]),
        )
    return AppCredentials(get_app(store, name), keys["secret_key"], keys["secret_access_key"], keys["v2_api_key"],
                          until)


def _retired(store: Store, column: str, value: str, now: float | None):
    """The still-valid retired credentials whose `column` (api_key, access_key, v2_key_hash) is `value`."""
    now = int(now if now is not None else time.time())
    return store.connection().execute(
        f"SELECT * FROM retired_credentials WHERE {column} = ? AND valid_until > ? ORDER BY valid_until DESC",
        (value, now),
    ).fetchone()


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


def check_client(store: Store, api_key: str, secret_key: str, now: float | None = None) -> App | None | bool:
    """The token endpoint's check: None for an unknown API Key, False for a wrong Secret Key.
    A pair retired by `app rotate` still passes during its grace period (the App says until when)."""
    row = store.connection().execute("SELECT * FROM apps WHERE api_key = ?", (api_key,)).fetchone()
    if row is not None:
        if not hmac.compare_digest(row["secret_key_hash"], _hash(secret_key)):
            return False
        return _row_to_app(row)
    old = _retired(store, "api_key", api_key, now)
    if old is None:
        return None
    if not hmac.compare_digest(old["secret_key_hash"], _hash(secret_key)):
        return False
    app = get_app_by_id(store, old["app_id"])
    return replace(app, retiring_at=old["valid_until"]) if app else None


def find_by_access_key(store: Store, access_key: str, now: float | None = None) -> tuple[App, str] | None:
    """The app and its Secret Access Key (decrypted), for verifying a bce-auth-v1 signature (a pair
    retired by `app rotate` is found during its grace period)."""
    row = store.connection().execute("SELECT * FROM apps WHERE access_key = ?", (access_key,)).fetchone()
    if row is not None:
        return _row_to_app(row), store.secrets.open(row["secret_access_key"])
    old = _retired(store, "access_key", access_key, now)
    if old is None:
        return None
    app = get_app_by_id(store, old["app_id"])
    return (replace(app, retiring_at=old["valid_until"]), store.secrets.open(old["secret_access_key"])) if app else None


def find_by_v2_key(store: Store, key: str, now: float | None = None) -> App | None:
    """The app whose v2 API key this is (compared by hash), or None; a key retired by `app rotate`
    is found during its grace period."""
    digest = _hash(key)
    row = store.connection().execute("SELECT * FROM apps WHERE v2_key_hash = ?", (digest,)).fetchone()
    if row is not None:
        return _row_to_app(row)
    old = _retired(store, "v2_key_hash", digest, now)
    app = get_app_by_id(store, old["app_id"]) if old is not None else None
    return replace(app, retiring_at=old["valid_until"]) if app else None


def get_app_by_id(store: Store, app_id: int) -> App | None:
    row = store.connection().execute("SELECT * FROM apps WHERE id = ?", (app_id,)).fetchone()
    return _row_to_app(row) if row else None


def grant(store: Store, name: str, api_path: str) -> None:
    """Restrict the app to granted services (if it wasn't yet) and grant this one, which must exist:
    the first grant restricts the app, so a typo would cut it off from every service."""
    with store.transaction() as conn:
        row = conn.execute("SELECT id FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        if not conn.execute("SELECT 1 FROM services WHERE api_path = ?", (api_path,)).fetchone():
            raise GrantError(f"no service at {api_path!r} (see `qfserve service list`); nothing granted")
        conn.execute("UPDATE apps SET all_services = 0 WHERE id = ?", (row["id"],))
        conn.execute("INSERT INTO grants (app_id, api_path) VALUES (?, ?) ON CONFLICT DO NOTHING", (row["id"], api_path))


def revoke(store: Store, name: str, api_path: str) -> None:
    """Withdraw an existing grant (the app keeps its other grants)."""
    with store.transaction() as conn:
        row = conn.execute("SELECT id, all_services FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AppNotFound(f"no app named {name!r}")
        if conn.execute("DELETE FROM grants WHERE app_id = ? AND api_path = ?", (row["id"], api_path)).rowcount == 0:
            if row["all_services"]:
                raise GrantError(f"app {name!r} has no grants: it may call every service. "
                                 f"To restrict it, grant it the services it should keep (`qfserve app grant {name} …`)")
            raise GrantError(f"app {name!r} has no grant for {api_path!r}; nothing revoked")


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
