"""Billing periods: calendar months in the tenant's time zone (DESIGN §6).

Periods are dates (tenant-local, end exclusive); this module is the one place where they become UTC
instants, at the boundary, for the rollup queries.
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

# The days a query (the read API, the portal's usage page and CSV) may name. Python's calendar runs from
# 0001-01-01 to 9999-12-31, and a query needs room around its days: the day and the month after its end,
# and its midnights in UTC for any time zone. No usage is older than the epoch.
FIRST_QUERY_DAY = date(1970, 1, 1)
LAST_QUERY_DAY = date(9998, 12, 31)


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def months_between(earlier: date, later: date) -> int:
    """Whole calendar months from ``earlier``'s month to ``later``'s (0 for the same month)."""
    return (later.year - earlier.year) * 12 + later.month - earlier.month


def previous_month(day: date) -> date:
    first = month_start(day)
    return date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)


def period_containing(instant: datetime, tz: str) -> tuple[date, date]:
    local_day = instant.astimezone(ZoneInfo(tz)).date()
    start = month_start(local_day)
    return start, next_month(start)


def local_midnight(day: date, tz: str) -> datetime:
    """The aware instant at which ``day`` begins in ``tz`` (DST-safe: midnight always exists in our zones,
    and where it would not, zoneinfo resolves it forward)."""
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(tz))


def days_between(start: date, end: date) -> int:
    return (end - start).days
