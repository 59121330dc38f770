"""Spend as tenants see it in the portal and the read API: period-to-date cost, forecast, breakdowns,
usage with its cost over any range of days, and per-session costs.

Invoices price a whole period; a breakdown (by day, agent, session, …) allocates each invoice group's
amount over its usage at that group's average unit price — exact in total, proportional within tiers.
Usage spanning several periods is priced period by period, each at its own average unit prices.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Max, Min, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from billing import call_costs, invoicing, period_pricing, periods, taxes
from billing.models import CallCost, CreditNote, Invoice, InvoiceLine
from billing.money import format_unit_price
from tenants.models import Tenant
from usage import rollups
from usage.models import Meter, UsageEvent

GroupKey = tuple[str, str, str]
FORECAST_MIN_DAYS = 3  # the forecast waits for this many days of a period (decision 014)


@dataclass
class Spend:
    tenant: Tenant
    start: date
    end: date
    priced: period_pricing.PricedPeriod
    rates: dict[GroupKey, Decimal]
    # Groups the period's pricing could not price (the invoice's unmatched usage): their cost reads 0 only
    # because nothing is billed for them yet, so every row with such usage says so (never shown as free).
    unpriced: frozenset[GroupKey] = frozenset()

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

    def days_so_far(self, now: datetime | None = None) -> Decimal:
        """Days of the period elapsed at ``now`` (fractional), what the forecast extrapolates from."""
        now = now or timezone.now()
        begin = periods.local_midnight(self.start, self.tenant.timezone)
        finish = periods.local_midnight(self.end, self.tenant.timezone)
        elapsed = max(min(now, finish) - begin, timedelta(0))
        return Decimal(elapsed.total_seconds()) / Decimal(86400)

    def forecast_is_early(self, now: datetime | None = None) -> bool:
        """Under FORECAST_MIN_DAYS of the period so far, a straight line says more about the hour of the day
        than about the month: the portal shows no figure then (docs/decisions/014-unpriced-usage.md)."""
        return self.days_so_far(now) < FORECAST_MIN_DAYS

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
    priced = period_pricing.price_period(tenant, start, end)
    amounts: dict[GroupKey, Decimal] = defaultdict(Decimal)
    quantities: dict[GroupKey, Decimal] = defaultdict(Decimal)
    for line in priced.lines:
        if line.kind in ("usage", "minimum"):
            # rounded amounts: allocations then add up to exactly what the invoice charges
            amounts[(line.meter, line.provider, line.model)] += line.amount
            if line.kind == "usage":
                quantities[(line.meter, line.provider, line.model)] += line.quantity
    rates = {key: amounts[key] / quantities[key] for key in quantities if quantities[key]}
    unpriced = frozenset((u["meter"], u["provider"], u["model"]) for u in priced.unmatched)
    return Spend(tenant, start, end, priced, rates, unpriced)


def current_spend(tenant: Tenant, now: datetime | None = None) -> Spend:
    start, end = invoicing.current_period(tenant, now)
    return spend(tenant, start, end)


def breakdowns(spend_: Spend, group_bys: list[str]) -> tuple[dict[str, list[dict]], list[dict]]:
    """Usage and allocated cost of the spend's period grouped by each g of ``group_bys`` (meter, agent,
    session, day or hour: usage.rollups.GROUPINGS), and the period's rows by (meter, provider, model), from one
    pass over the rollups."""
    tz = spend_.tenant.timezone
    *grouped, by_model = rollups.usage_row_sets(
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
    """The tenant's invoices, newest period first, each with ``credited``: what its credit notes credited.

    A subquery rather than a join grouped by invoice: PostgreSQL lets a query group by the primary key alone and
    select the other columns, which Django relies on, and the primary key is now (tenant_id, id) while Django
    still groups by id (decision 024)."""
    notes = CreditNote.objects.filter(tenant_id=OuterRef("tenant_id"), invoice_id=OuterRef("pk"))
    credited = notes.values("invoice_id").annotate(total=Sum("total")).values("total")
    return (
        Invoice.objects.for_tenant(tenant)
        .annotate(credited=Subquery(credited, output_field=Invoice._meta.get_field("total")))
        .order_by("-period_start")
    )


def credit_notes_for(tenant: Tenant, invoice: Invoice | None = None):
    notes = CreditNote.objects.for_tenant(tenant).filter(invoice__tenant=tenant).select_related("invoice")
    if invoice is not None:
        notes = notes.filter(invoice=invoice)
    return notes.order_by("-issued_at", "-id")


def credit_note_totals(note: CreditNote) -> list[tuple[str, Decimal, bool]]:
    """The credit note's figures as its page and PDF show them: (label, amount, counted in the total?) — the
    lines' subtotal, their share of the invoice's discounts, tax (named after the invoice's rate; contained
    rather than added for an inclusive one) and deductions, then the total credited."""
    rows: list[tuple[str, Decimal, bool]] = [("Subtotal", note.subtotal, True)]
    if note.discount_amount:
        rows.append(("Discounts", -note.discount_amount, True))
    tax_line = note.invoice.scoped("lines").filter(kind=InvoiceLine.Kind.TAX).order_by("position").first()
    if tax_line is not None:
        name = tax_line.description
        if note.tax_included:
            # "GST 10 % (included): 4.66 AUD of the amounts above" gives the invoice's figure: keep the rate's name
            rows.append((f"Of which {name.rsplit(': ', 1)[0]}", note.tax_amount, False))
        else:
            rows.append((name, note.tax_amount, True))
    if note.deduction_amount:
        rows.append(("Less prepaid credit and corrections on the invoice", -note.deduction_amount, True))
    rows.append(("Total credited", note.total, True))
    return rows


# What a fee line's unit price is per (usage lines are per their meter's unit).
FEE_UNITS = {InvoiceLine.Kind.BASE_FEE: "month", InvoiceLine.Kind.AGENT_FEE: "agent"}


def invoice_lines(invoice: Invoice) -> list[InvoiceLine]:
    """The invoice's lines in order, each with ``unit_price_text`` (``$0.012 per minute``, ``included``) as
    the invoice page, its print view and its PDF show it."""
    units = dict(Meter.objects.values_list("code", "unit"))
    lines = list(invoice.scoped("lines").order_by("position"))
    for line in lines:
        unit = FEE_UNITS.get(line.kind) or units.get(line.meter, "")
        line.unit_price_text = (
            format_unit_price(line.unit_price, line.unit_size, unit, invoice.currency)
            if line.unit_price is not None
            else ""
        )
    return lines


def priced_usage_rows(
    tenant: Tenant,
    start: date,
    end: date,
    group_by: list[str],
    filters: dict | None = None,
    spends: dict[date, Spend] | None = None,
) -> list[dict]:
    """Usage rows of the tenant-local days [start, end) (``usage.rollups.usage_rows`` with ``group_by`` and
    ``filters``), each with its allocated ``cost``.

    The range is read month by month and each month's rows are priced at that month's average unit prices,
    so a row appears once per month it has usage in. ``spends``: the months already priced by the caller
    (month → Spend), to which the months priced here are added — a page that reads the same range several
    ways prices each month once.
    """
    tz = tenant.timezone
    rows: list[dict] = []
    month = periods.month_start(start)
    while month < end:
        month_spend = spends.get(month) if spends is not None else None
        if month_spend is None:
            month_spend = spend(tenant, month, periods.next_month(month))
            if spends is not None:
                spends[month] = month_spend
        calls = _call_costs(tenant, month, filters) if "session" in group_by else {}
        lo, hi = max(start, month), min(end, periods.next_month(month))
        for row in rollups.usage_rows(
            tenant.pk, tz, periods.local_midnight(lo, tz), periods.local_midnight(hi, tz), group_by, filters
        ):
            key = (row["meter"], row["provider"], row["model"])
            call = calls.get((row["session"], *key)) if calls else None
            if call is not None:
                # Grouped by session: the calls' own costs (decision 017), the same as the session page; a
                # session only partly in the range gets its cost in proportion to the quantity in it.
                quantity, cost, unpriced = call
                row["cost"] = cost if row["quantity"] == quantity else cost * row["quantity"] / quantity
                row["unpriced"] = unpriced
            else:
                row["cost"] = month_spend.cost_of(key, row["quantity"])
                row["unpriced"] = key in month_spend.unpriced
            rows.append(row)
        month = periods.next_month(month)
    return rows


def _call_costs(
    tenant: Tenant, period: date, filters: dict | None
) -> dict[tuple, tuple[Decimal, Decimal, bool]]:
    """(session, meter, provider, model) → (quantity, per-call cost, unpriced) of one period."""
    found = _filtered_calls(tenant, filters).filter(period_start=period, quantity__gt=0)
    rows = found.values_list(
        "session_id", "meter", "provider", "model", "quantity", "cost", "unpriced_quantity"
    )
    return {(s, m, p, mo): (q, c, bool(u)) for s, m, p, mo, q, c, u in rows.iterator(chunk_size=10_000)}


def _filtered_calls(tenant: Tenant, filters: dict | None):
    """The tenant's per-call cost rows under usage.rollups.FILTERS other than agent (which they do not hold)."""
    found = CallCost.objects.for_tenant(tenant)
    for name in ("meter", "provider", "model"):
        if filters and filters.get(name) is not None:
            found = found.filter(**{name: filters[name]})
    if filters and filters.get("session") is not None:
        found = found.filter(session_id=filters["session"])
    if filters and filters.get("sessions") is not None:
        found = found.filter(session_id__in=filters["sessions"])
    return found


@dataclass
class GroupUsage:
    quantity: dict[str, Decimal]  # meter code → quantity
    cost: Decimal
    unpriced: dict[str, Decimal] = field(default_factory=dict)  # meter code → the part of quantity not priced


def usage_by_groups(
    tenant: Tenant,
    start: date,
    end: date,
    groups: list[str],
    filters: dict | None = None,
    spends: dict[date, Spend] | None = None,
) -> dict[tuple, GroupUsage]:
    """Quantity per meter and allocated cost of [start, end), keyed by the values of ``groups`` (any of
    usage.rollups.GROUPINGS) in that order, optionally filtered (usage.rollups.FILTERS): what the read API's
    GET /usage reports, and the portal's usage page and CSV show. ``spends``: as for priced_usage_rows."""
    sql_groups = [g for g in groups if g not in ("meter", "provider", "model")]
    merged: dict[tuple, GroupUsage] = {}
    for row in priced_usage_rows(tenant, start, end, sql_groups, filters, spends):
        group = merged.setdefault(tuple(row[g] for g in groups), GroupUsage({}, Decimal(0)))
        group.quantity[row["meter"]] = group.quantity.get(row["meter"], Decimal(0)) + row["quantity"]
        group.cost += row["cost"]
        if row["unpriced"]:
            group.unpriced[row["meter"]] = group.unpriced.get(row["meter"], Decimal(0)) + row["quantity"]
    return merged


def usage_by_group_sets(tenant: Tenant, start: date, end: date, group_sets: list[list[str]]) -> list[dict]:
    """``usage_by_groups(tenant, start, end, groups)`` for each ``groups`` of ``group_sets`` (each one of meter,
    agent, day or hour, or any of meter, provider and model), from one pass over the rollups a month
    (usage.rollups.usage_row_sets) rather than one for each: what a page with several breakdowns of the same
    days reads."""
    tz = tenant.timezone
    heads = [
        next((g for g in groups if g not in ("meter", "provider", "model")), None) for groups in group_sets
    ]
    found: list[dict[tuple, GroupUsage]] = [{} for _ in group_sets]
    month = periods.month_start(start)
    while month < end:
        month_spend = spend(tenant, month, periods.next_month(month))
        lo, hi = max(start, month), min(end, periods.next_month(month))
        row_sets = rollups.usage_row_sets(
            tenant.pk, tz, periods.local_midnight(lo, tz), periods.local_midnight(hi, tz), heads
        )
        for merged, groups, rows in zip(found, group_sets, row_sets, strict=True):
            for row in rows:
                key = (row["meter"], row["provider"], row["model"])
                group = merged.setdefault(tuple(row[g] for g in groups), GroupUsage({}, Decimal(0)))
                group.quantity[row["meter"]] = group.quantity.get(row["meter"], Decimal(0)) + row["quantity"]
                group.cost += month_spend.cost_of(key, row["quantity"])
                if key in month_spend.unpriced:
                    group.unpriced[row["meter"]] = (
                        group.unpriced.get(row["meter"], Decimal(0)) + row["quantity"]
                    )
        month = periods.next_month(month)
    return found


SESSIONS_PER_PAGE = 50


@dataclass
class SessionsPage:
    """One page of a report by session: ``groups`` as ``usage_by_groups`` keys them, for the page's sessions
    only, and ``next_after``, the last of them when more sessions follow (None on the last page)."""

    groups: dict[tuple, GroupUsage]
    next_after: str | None


def usage_by_sessions(
    tenant: Tenant,
    start: date,
    end: date,
    groups: list[str],
    filters: dict | None = None,
    *,
    after: str | None = None,
    limit: int = SESSIONS_PER_PAGE,
    spends: dict[date, Spend] | None = None,
) -> SessionsPage:
    """``usage_by_groups`` (``groups`` including "session") for the ``limit`` sessions after ``after`` in id
    order: a month of a large tenant has 10⁵ sessions and 10⁶ per-call cost rows, so a report by session is read
    a page at a time, each page costing the same (its sessions found by keyset, then their rollups and per-call
    costs only)."""
    tz = tenant.timezone
    ids = rollups.session_ids(
        tenant.pk,
        periods.local_midnight(start, tz),
        periods.local_midnight(end, tz),
        filters,
        after,
        limit + 1,
    )
    if not ids:
        return SessionsPage({}, None)
    page = ids[:limit]
    found = usage_by_groups(tenant, start, end, groups, {**(filters or {}), "sessions": page}, spends)
    return SessionsPage(found, page[-1] if len(ids) > limit else None)


def usage_quantities(
    tenant: Tenant, start: date, end: date, filters: dict | None = None
) -> dict[str, Decimal]:
    """Quantity per meter of the tenant-local days [start, end) under ``filters``, from the per-agent rollups
    unless a session is filtered on: the totals of a report by session without reading its sessions."""
    tz = tenant.timezone
    found: dict[str, Decimal] = defaultdict(Decimal)
    for row in rollups.usage_rows(
        tenant.pk, tz, periods.local_midnight(start, tz), periods.local_midnight(end, tz), [], filters
    ):
        found[row["meter"]] += row["quantity"]
    return dict(found)


def calls_total(tenant: Tenant, start: date, end: date, filters: dict | None = None) -> Decimal | None:
    """Σ per-call costs of [start, end) under ``filters``, what a report by session adds up to, when the range
    is whole billing periods (one aggregate); None for any other range, whose sessions at its edges count in
    part (that sum needs every session of the range: the CSV export has it), and under an agent filter."""
    if start != periods.month_start(start) or end != periods.month_start(end) or "agent" in (filters or {}):
        return None
    months = []
    while start < end:
        months.append(start)
        start = periods.next_month(start)
    return call_costs.calls_sum(tenant, _filtered_calls(tenant, filters).filter(period_start__in=months))


@dataclass(frozen=True)
class SessionCost:
    """One session's usage by (meter, provider, model), each row with its per-call ``cost`` (full precision,
    billing.call_costs), ``provider_cost`` and ``unpriced``, and their total."""

    first_event_at: datetime | None
    last_event_at: datetime | None
    event_count: int
    rows: list[dict]
    total: Decimal

    @property
    def provider_cost(self) -> Decimal:
        return sum((r["provider_cost"] for r in self.rows), Decimal(0))

    @property
    def uncosted(self) -> bool:
        """Some usage has no provider rate: the provider cost (and so the margin) is incomplete."""
        return any(r["uncosted_quantity"] for r in self.rows)


def session_cost(tenant: Tenant, session_id: str) -> SessionCost:
    """The usage and per-call cost of one conversation, as the portal's session page and GET /sessions/{id}
    show it: each quantity priced when it arrived, at the marginal rate (decision 017), so it does not move
    when other usage arrives (a correction takes out what the retracted event was charged, decision 021). The
    span and count are of the events that count (not retracted)."""
    span = (
        UsageEvent.objects.for_tenant(tenant)
        .filter(session_id=session_id, retracted_at__isnull=True)
        .aggregate(first=Min("timestamp"), last=Max("timestamp"), count=Count("id"))
    )
    rows = list(
        CallCost.objects.for_tenant(tenant)
        .filter(session_id=session_id)
        .values("meter", "provider", "model")
        .annotate(
            quantity=Sum("quantity"),
            cost=Sum("cost"),
            unpriced_quantity=Sum("unpriced_quantity"),
            provider_cost=Sum("provider_cost"),
            uncosted_quantity=Sum("uncosted_quantity"),
        )
        .order_by("meter", "provider", "model")
    )
    for row in rows:
        row["unpriced"] = bool(row["unpriced_quantity"])
    return SessionCost(
        span["first"], span["last"], span["count"], rows, sum((r["cost"] for r in rows), Decimal(0))
    )


def session_costs(tenant: Tenant, session_ids: list[str]) -> dict[str, Decimal]:
    """Per-call cost of each of the given sessions (a page of the portal's session list), from one query; a
    session without usage is left out."""
    if not session_ids:
        return {}
    return dict(
        CallCost.objects.for_tenant(tenant)
        .filter(session_id__in=session_ids)
        .values("session_id")
        .annotate(total=Sum("cost"))
        .values_list("session_id", "total")
    )


def invoice_parties(invoice: Invoice) -> dict:
    """Seller and buyer: as frozen at finalization, or as they stand now on a draft."""
    return invoice.parties or taxes.parties(invoice.tenant)


def tax_breakdown(invoice: Invoice) -> list[dict]:
    """Per rate: the name, rate (%), the amount it was computed on, the tax, and how (exclusive, inclusive,
    reverse charge), from the invoice's tax lines; a line Stripe Tax computed gives one row per rate and
    jurisdiction Stripe reported (decision 019)."""
    rows = []
    for line in invoice.scoped("lines").filter(Q(kind="tax") | Q(adjusts_kind="tax")).order_by("position"):
        snapshot = line.price_snapshot or {}
        if snapshot.get("breakdown"):
            rows += [
                {
                    "name": portion["name"],
                    "percent": Decimal(portion["percent"]),
                    "base": Decimal(portion["taxable"]),
                    "tax": Decimal(portion["tax"]),
                    "how": line.code,
                }
                for portion in snapshot["breakdown"]
            ]
            continue
        late = line.kind == InvoiceLine.Kind.ADJUSTMENT  # the change in an earlier period's tax
        rows.append(
            {
                "name": line.description,
                "percent": line.unit_price,
                "base": None if late else Decimal(snapshot.get("base", "0")),
                "tax": line.amount if late else Decimal(snapshot.get("tax", "0")),
                "how": line.code,
            }
        )
    return rows
