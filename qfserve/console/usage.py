"""Per-app usage for the console's app page: the usage table (qfserve/store/usage.py), by day."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date

from qfserve.store import usage as usage_store
from qfserve.store.db import Store


@dataclass(frozen=True)
class UsagePoint:
    service: str
    period_start: int  # unix seconds, start of the bucket (the day, at 00:00 UTC)
    requests: int
    tokens: int


def usage_by_app(store: Store, app_id: int) -> list[UsagePoint]:
    """Requests and tokens of one app, per service and day (in the quota time zone), oldest first."""
    return [
        UsagePoint(u.api_path, calendar.timegm(date.fromisoformat(u.day).timetuple()), u.requests,
                   u.prompt_tokens + u.completion_tokens)
        for u in usage_store.usage_of_app(store, app_id)
    ]
