"""Published services: api_path → base model, optional adapter, profile, limits, safety policy."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from qfserve.store.db import Store

API_PATH_RULE = re.compile(r"^[a-z0-9_-]{2,64}$")
DEFAULT_RPM = 300
DEFAULT_TPM = 300000
SAFETY_POLICIES = ("off", "default", "strict")


@dataclass(frozen=True)
class Service:
    api_path: str
    model: str  # "default" or a GGUF path
    adapter: str | None
    profile: str
    rpm: int
    tpm: int
    safety: str
    created_at: int

    def as_dict(self) -> dict:
        return asdict(self)


class ServiceExists(ValueError):
    pass


class ServiceNotFound(LookupError):
    pass


def check_api_path(api_path: str) -> str:
    if not API_PATH_RULE.match(api_path):
        raise ValueError(
            f"invalid api_path {api_path!r}: use 2 to 64 characters of lowercase letters, digits, '_' or '-'"
        )
    return api_path


def _row(row) -> Service:
    return Service(
        row["api_path"], row["model"], row["adapter"], row["profile"], row["rpm"], row["tpm"], row["safety"], row["created_at"]
    )


def publish_service(
    store: Store,
    api_path: str,
    *,
    model: str,
    profile: str,
    adapter: str | None = None,
    rpm: int = DEFAULT_RPM,
    tpm: int = DEFAULT_TPM,
    safety: str = "default",
    replace: bool = False,
) -> Service:
    check_api_path(api_path)
    if rpm <= 0 or tpm <= 0:
        raise ValueError("rpm and tpm must be positive")
    if safety not in SAFETY_POLICIES:
        raise ValueError(f"safety must be one of {', '.join(SAFETY_POLICIES)}")
    with store.transaction() as conn:
        exists = conn.execute("SELECT 1 FROM services WHERE api_path = ?", (api_path,)).fetchone()
        if exists and not replace:
            raise ServiceExists(f"a service is already published at {api_path!r}")
        conn.execute("DELETE FROM services WHERE api_path = ?", (api_path,))
        conn.execute(
            "INSERT INTO services (api_path, model, adapter, profile, rpm, tpm, safety, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (api_path, model, adapter, profile, rpm, tpm, safety, int(time.time())),
        )
    return get_service(store, api_path)


def get_service(store: Store, api_path: str) -> Service | None:
    row = store.connection().execute("SELECT * FROM services WHERE api_path = ?", (api_path,)).fetchone()
    return _row(row) if row else None


def list_services(store: Store) -> list[Service]:
    return [_row(r) for r in store.connection().execute("SELECT * FROM services ORDER BY api_path")]


def delete_service(store: Store, api_path: str) -> None:
    with store.transaction() as conn:
        if conn.execute("DELETE FROM services WHERE api_path = ?", (api_path,)).rowcount == 0:
            raise ServiceNotFound(f"no service at {api_path!r}")
