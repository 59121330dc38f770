"""What the dashboard and the usage explorer can show: this billing period, the last 30 days, or a past
period (issue 17 part 5)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.utils import timezone

from billing import periods
from billing.models import Invoice
from usage.models import AgentRollup

ROLLING_DAYS = 30
PAST_PERIODS = 12  # how many past periods the switcher offers


@dataclass(frozen=True)
class Window:
    """What the dashboard shows: ``current`` (this billing period, with forecast and budget), ``past`` (a
    closed period, as its invoice priced it) or ``rolling`` (the last 30 days, usage at each month's average
    unit prices, no fees)."""

    kind: str
    start: date
    end: date
    key: str  # the ?period= value ("" for the current period)
    label: str


def windows(tenant, today: date) -> list[Window]:
    """The switcher's choices: this period, the last 30 days, then past periods back to the tenant's first
    usage or invoice (at most PAST_PERIODS)."""
    current = periods.month_start(today)
    found = [
        Window("current", current, periods.next_month(current), "", "This period"),
        Window(
            "rolling",
            today - timedelta(days=ROLLING_DAYS - 1),
            today + timedelta(days=1),
            "last30",
            f"Last {ROLLING_DAYS} days",
        ),
    ]
    earliest = _first_period(tenant)
    month = periods.previous_month(current)
    while earliest and month >= earliest and len(found) < PAST_PERIODS + 2:
        found.append(Window("past", month, periods.next_month(month), f"{month:%Y-%m}", f"{month:%B %Y}"))
        month = periods.previous_month(month)
    return found


def _first_period(tenant) -> date | None:
    invoice = (
        Invoice.objects.for_tenant(tenant).order_by("period_start").values_list("period_start", flat=True)
    )
    first_hour = AgentRollup.objects.for_tenant(tenant).order_by("hour").values_list("hour", flat=True)
    days = [day for day in (invoice.first(),) if day is not None]
    if (hour := first_hour.first()) is not None:
        days.append(timezone.localtime(hour).date())
    return periods.month_start(min(days)) if days else None
