"""The daily quota's calendar: which day it is, and when the next one starts, in one time zone.

Qianfan counts days in China Standard Time, so Asia/Shanghai is the default.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Asia/Shanghai"


def check_timezone(name: str) -> str:
    """The name, if it is an IANA time zone this machine knows; a ValueError saying so otherwise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Asia/Shanghai or UTC") from None
    return name


class QuotaCalendar:
    def __init__(self, timezone: str = DEFAULT_TIMEZONE):
        self.timezone = check_timezone(timezone)
        self._zone = ZoneInfo(timezone)

    def day(self, now: float) -> str:
        """The local date at `now` (a Unix time), as YYYY-MM-DD."""
        return datetime.fromtimestamp(now, self._zone).date().isoformat()

    def utc_offset(self, now: float) -> int:
        """Seconds east of UTC at `now`: what the Redis script adds to its own clock to find the day."""
        return int(datetime.fromtimestamp(now, self._zone).utcoffset().total_seconds())

    def seconds_to_next_day(self, now: float) -> float:
        local = datetime.fromtimestamp(now, self._zone)
        midnight = datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=self._zone)
        return midnight.timestamp() - now
