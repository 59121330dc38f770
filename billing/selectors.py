"""Spend as tenants see it in the portal and the read API: period-to-date cost, forecast and breakdowns.

Invoices price a whole period; a breakdown (by day, agent, session, …) allocates each invoice group's
amount over its usage at that group's average unit price — exact in total, proportional within tiers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.utils import timezone

from billing import invoicing, periods
from billing.models import Invoice
from tenants.models import Tenant
from usage import rollups as usage_selectors

GroupKey = tuple[str, str, str]


@dataclass
class Spend:
    tenant: Tenant
    start: date
    end: date
    priced: invoicing.PricedPeriod
    rates: dict[GroupKey, Decimal]

    @property
    def total(self) -> Decimal:
        return self.priced.total

    @property
    def fixed_fees(self) -> Decimal:
        return sum(
            (line.amount for line in self.priced.lines if line.kind in ("base_fee", "agent_fee")), Decimal(0)
        )

    @property
    def usage_amount(self) -> Decimal:
        return self.total - self.fixed_fees

    def cost_of(self, key: GroupKey, quantity: Decimal) -> Decimal:
        return quantity * self.rates.get(key, Decimal(0))

    def forecast(self, now: datetime | None = None) -> Decimal:
        """Fees plus usage so far extrapolated linearly to the end of the period."""
        now = now or timezone.now()
        begin = periods.local_midnight(self.start, self.tenant.timezone)
        finish = periods.local_midnight(self.end, self.tenant.timezone)
        elapsed = (min(now, finish) - begin) / (finish - begin)
        if elapsed <= 0:
            return self.fixed_fees
        return self.fixed_fees + self.usage_amount / Decimal(str(elapsed))


def spend(tenant: Tenant, start: date, end: date) -> Spend:
    """Priced usage of [start, end): the stored draft's basis for the current period, priced afresh."""
    priced = invoicing.price_period(tenant, start, end)
    amounts: dict[GroupKey, Decimal] = defaultdict(Decimal)
    quantities: dict[GroupKey, Decimal] = defaultdict(Decimal)
    for line in priced.lines:
        if line.kind in ("usage", "minimum"):
            # rounded amounts: allocations then add up to exactly what the invoice charges
            amounts[(line.meter, line.provider, line.model)] += line.amount
            if line.kind == "usage":
                quantities[(line.meter, line.provider, line.model)] += line.quantity
    rates = {key: amounts[key] / quantities[key] for key in quantities if quantities[key]}
    return Spend(tenant, start, end, priced, rates)


def current_spend(tenant: Tenant, now: datetime | None = None) -> Spend:
    start, end = invoicing.current_period(tenant, now)
    return spend(tenant, start, end)


def breakdown(spend_: Spend, group_by: str, filters: dict | None = None) -> list[dict]:
    """Usage and allocated cost of the spend's period grouped by one of usage.selectors.GROUPINGS."""
    tz = spend_.tenant.timezone
    rows = usage_selectors.usage_rows(
        spend_.tenant.pk,
        tz,
        periods.local_midnight(spend_.start, tz),
        periods.local_midnight(spend_.end, tz),
        [group_by],
        filters,
    )
    return _allocate(spend_, group_by, rows)


def breakdowns(spend_: Spend, group_bys: list[str]) -> tuple[dict[str, list[dict]], list[dict]]:
    """``breakdown(spend_, g)`` for each g of ``group_bys`` (meter, agent, session, day or hour), and the
    period's rows by (meter, provider, model), from one pass over the rollups instead of one per grouping."""
    tz = spend_.tenant.timezone
    *grouped, by_model = usage_selectors.usage_row_sets(
        spend_.tenant.pk,
        tz,
        periods.local_midnight(spend_.start, tz),
        periods.local_midnight(spend_.end, tz),
        [*group_bys, None],
    )
    return {g: _allocate(spend_, g, rows) for g, rows in zip(group_bys, grouped, strict=True)}, by_model


def _allocate(spend_: Spend, group_by: str, rows: list[dict]) -> list[dict]:
    totals: dict = defaultdict(lambda: {"quantity": defaultdict(Decimal), "cost": Decimal(0), "events": 0})
    for row in rows:
        bucket = totals[row[group_by]]
        bucket["quantity"][row["meter"]] += row["quantity"]
        bucket["cost"] += spend_.cost_of((row["meter"], row["provider"], row["model"]), row["quantity"])
        bucket["events"] += row["events"]
    return [{"key": key, **value} for key, value in totals.items()]


def invoices_for(tenant: Tenant):
    return Invoice.objects.for_tenant(tenant).order_by("-period_start")
