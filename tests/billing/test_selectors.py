"""Spend selectors: the dashboard's one-pass breakdowns return exactly what one query per grouping returns."""

import pytest

from billing import selectors as billing_selectors
from usage import selectors

pytestmark = pytest.mark.django_db


def test_dashboard_breakdowns_equal_one_breakdown_per_grouping(world):
    spend = billing_selectors.current_spend(world.tenants[0])
    breakdowns, by_model = billing_selectors.breakdowns(spend, ["day", "meter", "agent"])
    assert breakdowns == {g: billing_selectors.breakdown(spend, g) for g in ("day", "meter", "agent")}
    assert sum(bucket["cost"] for bucket in breakdowns["meter"]) > 0
    tz = spend.tenant.timezone
    assert by_model == selectors.usage_rows(
        spend.tenant.pk,
        tz,
        billing_selectors.periods.local_midnight(spend.start, tz),
        billing_selectors.periods.local_midnight(spend.end, tz),
        [],
    )
