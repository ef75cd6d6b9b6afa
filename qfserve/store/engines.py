"""Remote engine pools: a name, its replica URLs, and how to reach and talk to them."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from qfserve.store.db import Store

POOL_NAME_RULE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
EMBEDDED = "default"  # the engine name of services on the embedded llama.cpp engine


@dataclass(frozen=True)
class EnginePool:
    name: str
    urls: tuple[str, ...]
    api_key_env: str | None = None
    options: dict = field(default_factory=dict)
    created_at: int = 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["urls"] = list(self.urls)
        return out


class PoolExists(ValueError):
    pass


class PoolNotFound(LookupError):
    pass


class PoolInUse(ValueError):
    pass


def check_pool_name(name: str) -> str:
    if name == EMBEDDED or not POOL_NAME_RULE.match(name):
        raise ValueError(f"invalid engine name {name!r}: use 1 to 40 of A-Z a-z 0-9 _ . - (not {EMBEDDED!r})")
    return name


def check_url(url: str) -> str:
    url = url.rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise ValueError(f"invalid replica URL {url!r}: use http://host:port")
    return url


def _row(row) -> EnginePool:
    return EnginePool(row["name"], tuple(json.loads(row["urls"])), row["api_key_env"],
                      json.loads(row["options"] or "{}"), row["created_at"])


def add_pool(store: Store, name: str, urls: list[str], *, api_key_env: str | None = None,
             options: dict | None = None, replace: bool = False) -> EnginePool:
    check_pool_name(name)
    if not urls:
        raise ValueError("an engine needs at least one --url")
    clean = list(dict.fromkeys(check_url(u) for u in urls))
    with store.transaction() as conn:
        exists = conn.execute("SELECT 1 FROM engine_pools WHERE name = ?", (name,)).fetchone()
        if exists and not replace:
            raise PoolExists(f"an engine named {name!r} already exists (use --replace)")
        conn.execute("DELETE FROM engine_pools WHERE name = ?", (name,))
        conn.execute(
            "INSERT INTO engine_pools (name, urls, api_key_env, options, created_at) VALUES (?, ?, ?, ?, ?)",
            (name, json.dumps(clean), api_key_env, json.dumps(options or {}, ensure_ascii=False), int(time.time())),
        )
    return get_pool(store, name)


def get_pool(store: Store, name: str) -> EnginePool | None:
    row = store.connection().execute("SELECT * FROM engine_pools WHERE name = ?", (name,)).fetchone()
    return _row(row) if row else None


def list_pools(store: Store) -> list[EnginePool]:
    return [_row(r) for r in store.connection().execute("SELECT * FROM engine_pools ORDER BY name")]


def remove_pool(store: Store, name: str) -> None:
    with store.transaction() as conn:
        users = [r[0] for r in conn.execute("SELECT api_path FROM services WHERE engine = ? ORDER BY api_path", (name,))]
        if users:
            raise PoolInUse(f"engine {name!r} serves {', '.join(users)}: delete or republish those services first")
        if conn.execute("DELETE FROM engine_pools WHERE name = ?", (name,)).rowcount == 0:
            raise PoolNotFound(f"no engine named {name!r}")
