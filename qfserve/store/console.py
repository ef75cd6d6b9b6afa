"""The web console's rows: one-time sign-in tokens, sessions, uploaded data sets, fine-tuning jobs."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from qfserve.store.db import Store


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- sign-in tokens and sessions -------------------------------------------------------------

def add_signin_token(store: Store, token: str, ttl: int, now: float | None = None) -> None:
    now = int(now if now is not None else time.time())
    with store.transaction() as conn:
        conn.execute("DELETE FROM console_signin_tokens WHERE expires_at < ?", (now,))
        conn.execute("INSERT INTO console_signin_tokens (token_hash, created_at, expires_at) VALUES (?, ?, ?)",
                     (token_hash(token), now, now + ttl))


def consume_signin_token(store: Store, token: str, now: float | None = None) -> bool:
    """True once for a valid, unexpired token; it is deleted in the same transaction."""
    now = int(now if now is not None else time.time())
    with store.transaction() as conn:
        row = conn.execute("SELECT expires_at FROM console_signin_tokens WHERE token_hash = ?",
                           (token_hash(token),)).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM console_signin_tokens WHERE token_hash = ?", (token_hash(token),))
        return row["expires_at"] >= now


@dataclass(frozen=True)
class Session:
    csrf_token: str
    expires_at: int


def add_session(store: Store, token: str, csrf_token: str, ttl: int, now: float | None = None) -> None:
    now = int(now if now is not None else time.time())
    with store.transaction() as conn:
        conn.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
        conn.execute("INSERT INTO console_sessions (token_hash, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (token_hash(token), csrf_token, now, now + ttl))


def get_session(store: Store, token: str, now: float | None = None) -> Session | None:
    now = int(now if now is not None else time.time())
    row = store.connection().execute(
        "SELECT csrf_token, expires_at FROM console_sessions WHERE token_hash = ?", (token_hash(token),)
    ).fetchone()
    if row is None or row["expires_at"] < now:
        return None
    return Session(row["csrf_token"], row["expires_at"])


def delete_session(store: Store, token: str) -> None:
    with store.transaction() as conn:
        conn.execute("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash(token),))


def delete_all_sessions(store: Store) -> int:
    with store.transaction() as conn:
        return conn.execute("DELETE FROM console_sessions").rowcount


# --- data sets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    path: str
    conversations: int
    created_at: int


def add_dataset(store: Store, name: str, path: str, conversations: int) -> Dataset:
    with store.transaction() as conn:
        dataset_id = conn.execute(
            "INSERT INTO console_datasets (name, path, conversations, created_at) VALUES (?, ?, ?, ?) RETURNING id",
            (name, path, conversations, int(time.time())),
        ).fetchone()[0]
    return get_dataset(store, dataset_id)


def get_dataset(store: Store, dataset_id: int) -> Dataset | None:
    row = store.connection().execute("SELECT * FROM console_datasets WHERE id = ?", (dataset_id,)).fetchone()
    return Dataset(row["id"], row["name"], row["path"], row["conversations"], row["created_at"]) if row else None


def list_datasets(store: Store) -> list[Dataset]:
    rows = store.connection().execute("SELECT * FROM console_datasets ORDER BY id DESC").fetchall()
    return [Dataset(r["id"], r["name"], r["path"], r["conversations"], r["created_at"]) for r in rows]


# --- fine-tuning jobs ------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    id: int
    name: str
    dataset_id: int
    out_dir: str
    config: dict
    status: str
    pid: int | None
    error: str | None
    eval_status: str | None
    eval_result: dict | None
    service: str | None
    created_at: int
    finished_at: int | None


class JobExists(ValueError):
    pass


def _job(row) -> Job:
    return Job(row["id"], row["name"], row["dataset_id"], row["out_dir"], json.loads(row["config"]), row["status"],
               row["pid"], row["error"], row["eval_status"],
               json.loads(row["eval_result"]) if row["eval_result"] else None, row["service"],
               row["created_at"], row["finished_at"])


def add_job(store: Store, name: str, dataset_id: int, out_dir: str, config: dict) -> Job:
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM console_jobs WHERE name = ?", (name,)).fetchone():
            raise JobExists(f"a job named {name!r} already exists")
        job_id = conn.execute(
            "INSERT INTO console_jobs (name, dataset_id, out_dir, config, status, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (name, dataset_id, out_dir, json.dumps(config), "queued", int(time.time())),
        ).fetchone()[0]
    return get_job(store, job_id)


def get_job(store: Store, job_id: int) -> Job | None:
    row = store.connection().execute("SELECT * FROM console_jobs WHERE id = ?", (job_id,)).fetchone()
    return _job(row) if row else None


def list_jobs(store: Store) -> list[Job]:
    return [_job(r) for r in store.connection().execute("SELECT * FROM console_jobs ORDER BY id DESC")]


_JOB_FIELDS = {"status", "pid", "error", "eval_status", "eval_result", "service", "finished_at"}


def update_job(store: Store, job_id: int, **fields) -> None:
    unknown = set(fields) - _JOB_FIELDS
    if unknown:
        raise ValueError(f"unknown job fields: {sorted(unknown)}")
    if "eval_result" in fields and fields["eval_result"] is not None:
        fields["eval_result"] = json.dumps(fields["eval_result"])
    assignments = ", ".join(f"{name} = ?" for name in fields)
    with store.transaction() as conn:
        conn.execute(f"UPDATE console_jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
