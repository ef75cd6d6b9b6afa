"""Published services: api_path → base model, optional adapter, profile, limits, safety policy,
and the sampling defaults the seed does not name (top_k, min_p; NULL = the engine's default)."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from qfserve.store.db import Store

# Up to 64 characters: Qianfan's own endpoint names (`qianfan_bloomz_7b_compressed`, 28) exceed the
# 20 of its documented examples. Preset endpoints (what the SDK calls for a model name) fit too.
API_PATH_RULE = re.compile(r"^[a-z0-9_-]{2,64}$")
PRESET_PATH_RULE = API_PATH_RULE
DEFAULT_RPM = 300
DEFAULT_TPM = 300000
SAFETY_POLICIES = ("off", "default", "strict")
# What `update_service` may change; anything else is not a setting.
SETTINGS = ("model", "adapter", "adapter_sha256", "profile", "rpm", "tpm", "safety", "top_k", "min_p")


@dataclass(frozen=True)
class Service:
    api_path: str
    model: str  # "default" or a GGUF path; on a remote engine, the served model or LoRA name
    adapter: str | None
    profile: str
    rpm: int
    tpm: int
    safety: str
    created_at: int
    top_k: int | None = None    # None: the engine's default; 0: off
    min_p: float | None = None  # None: the engine's default; 0.0: off
    adapter_sha256: str | None = None  # the adapter GGUF's sha256 pinned at publish
    engine: str | None = None  # scale-out (issue 11): a remote engine pool's name; None is embedded

    def as_dict(self) -> dict:
        return asdict(self)


class ServiceExists(ValueError):
    pass


class ServiceNotFound(LookupError):
    pass


def check_api_path(api_path: str, *, preset: bool = False) -> str:
    if not (PRESET_PATH_RULE if preset else API_PATH_RULE).match(api_path):
        raise ValueError(
            f"invalid api_path {api_path!r}: use 2 to 64 characters of lowercase letters, digits, '_' or '-'"
        )
    return api_path


def check_settings(*, rpm=None, tpm=None, safety=None, top_k=None, min_p=None) -> None:
    """Raises ValueError naming the first bad value (None: not given)."""
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm <= 0):
        raise ValueError(f"rpm must be a positive integer, got {rpm!r}")
    if tpm is not None and (isinstance(tpm, bool) or not isinstance(tpm, int) or tpm <= 0):
        raise ValueError(f"tpm must be a positive integer, got {tpm!r}")
    if safety is not None and safety not in SAFETY_POLICIES:
        raise ValueError(f"safety must be one of {', '.join(SAFETY_POLICIES)}, got {safety!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 turns it off), got {top_k!r}")
    if min_p is not None and (isinstance(min_p, bool) or not isinstance(min_p, (int, float))
                              or not 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be a number from 0 to 1 (0 turns it off), got {min_p!r}")


def _row(row) -> Service:
    return Service(
        row["api_path"], row["model"], row["adapter"], row["profile"], row["rpm"], row["tpm"], row["safety"],
        row["created_at"], row["top_k"], row["min_p"], row["adapter_sha256"], row["engine"],
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
    top_k: int | None = None,
    min_p: float | None = None,
    preset: bool = False,
    adapter_sha256: str | None = None,
    engine: str | None = None,
) -> Service:
    """A new service; an address already taken raises ServiceExists (change it with update_service)."""
    check_api_path(api_path, preset=preset)
    check_settings(rpm=rpm, tpm=tpm, safety=safety, top_k=top_k, min_p=min_p)
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM services WHERE api_path = ?", (api_path,)).fetchone():
            raise ServiceExists(
                f"a service is already published at {api_path!r}: change it with "
                f"`qfserve service update {api_path} …`, or `qfserve service delete {api_path}` first"
            )
        if engine is not None and not conn.execute("SELECT 1 FROM engine_pools WHERE name = ?", (engine,)).fetchone():
            raise ValueError(f"no engine named {engine!r}: add it with `qfserve engine add {engine} --url …`")
        conn.execute(
            "INSERT INTO services (api_path, model, adapter, profile, rpm, tpm, safety, top_k, min_p, created_at,"
            " adapter_sha256, engine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (api_path, model, adapter, profile, rpm, tpm, safety, top_k,
             None if min_p is None else float(min_p), int(time.time()), adapter_sha256, engine),
        )
    return get_service(store, api_path)


def update_service(store: Store, api_path: str, **changes) -> Service:
    """Change only the settings named in `changes` (a value of None resets adapter/top_k/min_p)."""
    unknown = set(changes) - set(SETTINGS)
    if unknown:
        raise ValueError(f"not a service setting: {', '.join(sorted(unknown))}")
    for required in ("model", "profile", "rpm", "tpm", "safety"):
        if required in changes and changes[required] is None:
            raise ValueError(f"{required} cannot be empty")
    check_settings(**{k: v for k, v in changes.items() if k in ("rpm", "tpm", "safety", "top_k", "min_p")})
    if changes.get("min_p") is not None:
        changes["min_p"] = float(changes["min_p"])
    with store.transaction() as conn:
        if not conn.execute("SELECT 1 FROM services WHERE api_path = ?", (api_path,)).fetchone():
            raise ServiceNotFound(f"no service at {api_path!r}")
        if changes:
            assignments = ", ".join(f"{column} = ?" for column in changes)  # names checked against SETTINGS
            conn.execute(f"UPDATE services SET {assignments} WHERE api_path = ?", (*changes.values(), api_path))
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
