"""Spend selectors: breakdowns, priced usage lines and groups, and session costs agree with one another."""

from collections import defaultdict
from decimal import Decimal

import pytest

from billing import periods
from billing import selectors as billing_selectors
from usage import rollups
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db


def test_dashboard_breakdowns_split_the_period_by_each_grouping(world):
    tenant = world.tenants[0]
    spend = billing_selectors.current_spend(tenant)
    groupings = ["day", "meter", "agent"]
    breakdowns, by_model = billing_selectors.breakdowns(spend, groupings)

    tz = tenant.timezone
    begin, end = (periods.local_midnight(day, tz) for day in (spend.start, spend.end))
    raw: dict[str, Decimal] = defaultdict(Decimal)  # from the raw events, not the rollups
    for usage in UsageEvent.objects.filter(
        tenant=tenant, timestamp__gte=begin, timestamp__lt=end
    ).values_list("usage", flat=True):
        for meter, quantity in usage.items():
            raw[meter] += Decimal(quantity)
    billed = sum(line.amount for line in spend.priced.lines if line.kind in ("usage", "minimum"))
    assert billed > 0
    micro = Decimal("0.000001")  # allocation divides an amount by a quantity, then multiplies back
    for grouping in groupings:
        per_meter: dict[str, Decimal] = defaultdict(Decimal)
        for bucket in breakdowns[grouping]:
            for meter, quantity in bucket["quantity"].items():
                per_meter[meter] += quantity
        assert per_meter == raw, grouping
        assert sum(bucket["cost"] for bucket in breakdowns[grouping]).quantize(micro) == billed
    assert by_model == rollups.usage_rows(tenant.pk, tz, begin, end, [])


def test_a_page_of_session_costs_equals_each_sessions_own_cost(world):
    tenant = world.tenants[0]
    own = billing_selectors.session_cost(tenant, "call-0")
    assert own.event_count > 0 and own.total > 0
    assert own.total == sum(row["cost"] for row in own.rows)
    assert billing_selectors.session_costs(tenant, ["call-0", "call-1", "no-such-call"]) == {
        "call-0": own.total
    }
    assert billing_selectors.session_costs(tenant, []) == {}


def test_usage_groups_cost_the_period_as_its_breakdown_does(world):
    tenant = world.tenants[0]
    spend = billing_selectors.current_spend(tenant)
    by_meter = {row["key"]: row["cost"] for row in billing_selectors.breakdowns(spend, ["meter"])[0]["meter"]}
    sessions = billing_selectors.usage_by_groups(tenant, spend.start, spend.end, ["session"])
    assert set(sessions) == {("call-0",)}
    micro = Decimal("0.000001")  # the sums add the same costs in another order
    # grouped by session: each call's own cost, as its session page gives it (decision 017), not the allocation
    assert sessions[("call-0",)].cost == billing_selectors.session_cost(tenant, "call-0").total
    groups = billing_selectors.usage_by_groups(tenant, spend.start, spend.end, ["meter"])
    assert {key[0]: group.cost.quantize(micro) for key, group in groups.items()} == {
        meter: cost.quantize(micro) for meter, cost in by_meter.items()
    }
