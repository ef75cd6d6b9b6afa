"""Per-app usage for the console's app page.

`usage_by_app` is the one interface the page reads. qfserve does not record per-app usage yet (the
usage table is another change's, migration 0005); until it lands this answers with no rows and the
page says so. When it lands, this function reads it through the store and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.store.db import Store


@dataclass(frozen=True)
class UsagePoint:
    service: str
    period_start: int  # unix seconds, start of the bucket
    requests: int
    tokens: int


def usage_by_app(store: Store, app_id: int) -> list[UsagePoint]:
    """Requests and tokens of one app, per service and time bucket, oldest first."""
    return []
