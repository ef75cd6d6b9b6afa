"""Usage accounting: requests and tokens per (app, service, day), added in batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from qfserve.store.db import Store


@dataclass(frozen=True)
class Usage:
    app_id: int
    api_path: str
    day: str  # YYYY-MM-DD in the quota time zone
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def add_usage(store: Store, rows: Iterable[Usage]) -> None:
    """Add the rows' counts to what is stored, in one transaction. Rows of deleted apps are dropped."""
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO usage (app_id, api_path, day, requests, prompt_tokens, completion_tokens)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM apps WHERE id = ?)"
            " ON CONFLICT (app_id, day, api_path) DO UPDATE SET"
            " requests = usage.requests + excluded.requests,"
            " prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens,"
            " completion_tokens = usage.completion_tokens + excluded.completion_tokens",
            [(r.app_id, r.api_path, r.day, r.requests, r.prompt_tokens, r.completion_tokens, r.app_id) for r in rows],
        )


def usage_on(store: Store, day: str) -> list[Usage]:
    rows = store.connection().execute(
        "SELECT * FROM usage WHERE day = ? ORDER BY app_id, api_path", (day,)
    ).fetchall()
    return [Usage(r["app_id"], r["api_path"], r["day"], r["requests"], r["prompt_tokens"], r["completion_tokens"])
            for r in rows]


def usage_of_app(store: Store, app_id: int) -> list[Usage]:
    """Every recorded day of one app, per service, oldest first."""
    rows = store.connection().execute(
        "SELECT * FROM usage WHERE app_id = ? ORDER BY day, api_path", (app_id,)
    ).fetchall()
    return [Usage(r["app_id"], r["api_path"], r["day"], r["requests"], r["prompt_tokens"], r["completion_tokens"])
            for r in rows]


def requests_on(store: Store, app_id: int, day: str) -> int:
    """The app's requests on `day`, over all services."""
    row = store.connection().execute(
        "SELECT COALESCE(SUM(requests), 0) FROM usage WHERE app_id = ? AND day = ?", (app_id, day)
    ).fetchone()
    return int(row[0])
