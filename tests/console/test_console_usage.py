"""The app page's usage rows come from the usage table the chat path fills."""

from __future__ import annotations

import calendar
from datetime import date

from qfserve.console.usage import UsagePoint, usage_by_app
from qfserve.store import apps, usage
from qfserve.store.db import Store


def test_usage_by_app_reads_the_usage_table_per_day_and_service(tmp_path):
    store = Store(tmp_path)
    mine = apps.create_app(store, "mine").app
    other = apps.create_app(store, "other").app
    usage.add_usage(store, [
        usage.Usage(mine.id, "svc", "2026-11-30", 3, 30, 12),
        usage.Usage(mine.id, "svc", "2026-12-01", 1, 10, 4),
        usage.Usage(mine.id, "b", "2026-12-01", 2, 5, 5),
        usage.Usage(other.id, "svc", "2026-12-01", 9, 90, 90),
    ])
    day = lambda text: calendar.timegm(date.fromisoformat(text).timetuple())  # noqa: E731
    assert usage_by_app(store, mine.id) == [
        UsagePoint("svc", day("2026-11-30"), 3, 42),
        UsagePoint("b", day("2026-12-01"), 2, 10),
        UsagePoint("svc", day("2026-12-01"), 1, 14),
    ]
    store.close()
