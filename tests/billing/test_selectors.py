"""Spend selectors: breakdowns, priced usage lines and groups, and session costs agree with one another."""

from decimal import Decimal

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


def test_a_page_of_session_costs_equals_each_sessions_own_cost(world):
    tenant = world.tenants[0]
    own = billing_selectors.session_cost(tenant, "call-0")
    assert own.event_count > 0 and own.total > 0
    assert own.total == sum(row["cost"] for row in own.rows)
    assert billing_selectors.session_costs(tenant, ["call-0", "call-1", "no-such-call"]) == {
        "call-0": own.total
    }
    assert billing_selectors.session_costs(tenant, []) == {}


def test_usage_lines_and_groups_cost_the_period_as_its_breakdown_does(world):
    tenant = world.tenants[0]
    spend = billing_selectors.current_spend(tenant)
    by_meter = {row["key"]: row["cost"] for row in billing_selectors.breakdown(spend, "meter")}
    lines = billing_selectors.usage_lines(tenant, spend.start, spend.end, "session")
    assert {line["session"] for line in lines} == {"call-0"}
    micro = Decimal("0.000001")  # the sums add the same costs in another order
    assert sum(line["cost"] for line in lines).quantize(micro) == sum(by_meter.values()).quantize(micro)
    groups = billing_selectors.usage_by_groups(tenant, spend.start, spend.end, ["meter"])
    assert {key[0]: group.cost.quantize(micro) for key, group in groups.items()} == {
        meter: cost.quantize(micro) for meter, cost in by_meter.items()
    }
