"""Memories about end users: the SQL side of `qfserve.memory` (schema in migrations/0002_memories.sql).

Every query is scoped by app: callers pass the app id they authenticated, so one app can never read
or delete another app's users. Writes are one transaction each, so two extractions for the same user
finishing together cannot both think they hold the current value of a slot.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

from qfserve.store.db import Store


@dataclass(frozen=True)
class Memory:
    id: int
    app_id: int
    api_path: str
    user_id: str
    slot: str
    text: str
    extractor: str
    request_id: str
    round: int
    created_at: float
    last_used_at: float
    superseded_by: int | None

    @property
    def active(self) -> bool:
        return self.superseded_by is None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NewMemory:
    """A fact about to be stored: what it is about (`slot`), its text, and who found it."""

    slot: str
    text: str
    extractor: str


def _row(row) -> Memory:
    return Memory(
        row["id"], row["app_id"], row["api_path"], row["user_id"], row["slot"], row["text"], row["extractor"],
        row["request_id"], row["round"], row["created_at"], row["last_used_at"], row["superseded_by"],
    )


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def save(
    store: Store,
    *,
    app_id: int,
    api_path: str,
    user_id: str,
    request_id: str,
    round: int,
    facts: Sequence[NewMemory],
    max_per_user: int,
    now: float | None = None,
) -> list[Memory]:
    """Store facts for one user; returns the current memory holding each fact.

    A fact already known (same text, still current) is not stored twice: the existing memory is
    marked used and returned. A fact whose slot holds a different current value supersedes it.
    Then the user's memories are cut back to `max_per_user` (see `_evict`).
    """
    now = time.time() if now is None else now
    scope = (app_id, api_path, user_id)
    saved: list[int] = []
    with store.transaction() as conn:
        for fact in facts:
            current = conn.execute(
                "SELECT id, slot, text FROM memories WHERE app_id = ? AND api_path = ? AND user_id = ?"
                " AND superseded_by IS NULL AND (slot = ? OR text = ?)",
                (*scope, fact.slot, fact.text),
            ).fetchall()
            repeat = next((r["id"] for r in current if _same_text(r["text"], fact.text)), None)
            if repeat is not None:
                conn.execute("UPDATE memories SET last_used_at = ? WHERE id = ?", (now, repeat))
                saved.append(repeat)
                continue
            new_id = conn.execute(
                "INSERT INTO memories (app_id, api_path, user_id, slot, text, extractor, request_id, round,"
                " created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (*scope, fact.slot, fact.text, fact.extractor, request_id, round, now, now),
            ).fetchone()[0]
            older = [r["id"] for r in current if r["slot"] == fact.slot]
            conn.executemany("UPDATE memories SET superseded_by = ? WHERE id = ?", [(new_id, o) for o in older])
            saved.append(new_id)
        _evict(conn, scope, max_per_user)
        rows = {r["id"]: r for r in _select_ids(conn, saved)}
    # A memory evicted straight away (a cap smaller than one request's facts) is simply not returned.
    return [_row(rows[i]) for i in dict.fromkeys(saved) if i in rows]


def _evict(conn, scope: tuple, max_per_user: int) -> None:
    """Keep at most `max_per_user` memories for the user, dropping the least recently used first.

    Superseded memories go before current ones whatever their age: they are history, never
    recalled, and a current fact is worth more than the record of an old one.
    """
    conn.execute(
        "DELETE FROM memories WHERE app_id = ? AND api_path = ? AND user_id = ? AND id NOT IN ("
        "SELECT id FROM memories WHERE app_id = ? AND api_path = ? AND user_id = ?"
        " ORDER BY superseded_by IS NULL DESC, last_used_at DESC, id DESC LIMIT ?)",
        (*scope, *scope, max(max_per_user, 0)),
    )


def _select_ids(conn, ids: list[int]):
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    return conn.execute(f"SELECT * FROM memories WHERE id IN ({marks})", ids).fetchall()


def current(store: Store, app_id: int, api_path: str, user_id: str) -> list[Memory]:
    """The user's memories that are not superseded: what recall chooses from."""
    rows = store.connection().execute(
        "SELECT * FROM memories WHERE app_id = ? AND api_path = ? AND user_id = ? AND superseded_by IS NULL"
        " ORDER BY id",
        (app_id, api_path, user_id),
    ).fetchall()
    return [_row(r) for r in rows]


def touch(store: Store, ids: Sequence[int], now: float | None = None) -> None:
    """Mark memories as just used (recalled), which keeps them from eviction."""
    if not ids:
        return
    now = time.time() if now is None else now
    with store.transaction() as conn:
        conn.executemany("UPDATE memories SET last_used_at = ? WHERE id = ?", [(now, i) for i in ids])


def _filters(user_id: str, app_id: int | None, api_path: str | None, memory_id: int | None) -> tuple[str, list]:
    clauses, args = ["user_id = ?"], [user_id]
    for column, value in (("app_id", app_id), ("api_path", api_path), ("id", memory_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return " AND ".join(clauses), args


def list_memories(
    store: Store, user_id: str, *, app_id: int | None = None, api_path: str | None = None
) -> list[Memory]:
    """All of a user's memories, superseded ones included, oldest first. `app_id=None` is the operator's view."""
    where, args = _filters(user_id, app_id, api_path, None)
    rows = store.connection().execute(
        f"SELECT * FROM memories WHERE {where} ORDER BY app_id, api_path, id", args
    ).fetchall()
    return [_row(r) for r in rows]


def delete_memories(
    store: Store,
    user_id: str,
    *,
    app_id: int | None = None,
    api_path: str | None = None,
    memory_id: int | None = None,
) -> int:
    """Delete one memory (`memory_id`) or all of a user's; returns how many rows went."""
    where, args = _filters(user_id, app_id, api_path, memory_id)
    with store.transaction() as conn:
        return conn.execute(f"DELETE FROM memories WHERE {where}", args).rowcount


@dataclass(frozen=True)
class UserCount:
    """How much is remembered about one end user in one app's service."""

    app_id: int
    api_path: str
    user_id: str
    current: int   # memories in use
    total: int     # superseded ones included

    def as_dict(self) -> dict:
        return asdict(self)


def users_with_memories(store: Store, *, app_id: int | None = None, api_path: str | None = None) -> list[UserCount]:
    """Every (app, service, user) that has memories, with counts. `app_id=None`: all apps."""
    clauses, args = [], []
    if app_id is not None:
        clauses.append("app_id = ?")
        args.append(app_id)
    if api_path is not None:
        clauses.append("api_path = ?")
        args.append(api_path)
    where = " AND ".join(clauses) or "1"
    rows = store.connection().execute(
        "SELECT app_id, api_path, user_id, SUM(superseded_by IS NULL) AS current, COUNT(*) AS total"
        f" FROM memories WHERE {where} GROUP BY app_id, api_path, user_id ORDER BY app_id, api_path, user_id",
        args,
    ).fetchall()
    return [UserCount(r["app_id"], r["api_path"], r["user_id"], r["current"], r["total"]) for r in rows]
