"""Per-call costs: each conversation's usage priced when it arrives, kept at full precision, never moved by
later usage (issue 17 part 1; docs/decisions/017-per-call-costs.md has the reasoning).

:func:`record` runs in every ingest transaction (usage.ingest's stored-hooks, registered by billing's app
config) with the events that batch actually inserted, in receipt order (event-id order within a batch). Each
quantity is priced by the plan version the invoice will use for its tenant-local day, at the *marginal* rate:

- per unit, cost-plus (provider rate in force × (1 + markup)) and package (pro rata: the package price per
  unit) are linear;
- graduated tiers price the slice between the price's position before and after this quantity, volume tiers
  price the quantity at the tier that position lands in; the position is the usage the price has pooled in
  the period so far in receipt order (``billing_tierposition``, taken under a row lock, so concurrent batches
  queue and no two quantities share a slice);
- allowances, tier flat amounts, the rounding up to whole packages, minimums and fees are *period* amounts,
  not any call's: they are the "rounding and period fees" between Σ call costs and the invoice
  (:func:`period_reconciliation`).

The results are added to ``billing_callcost`` per (session, period, meter, provider, model) with the provider
cost beside them (for staff margins), and the groups no price matched are returned as the ingest response's
``unpriced`` report (billing.unpriced). ``manage.py rebuild_call_costs`` recomputes a tenant's periods from the
stored events that count in receipt order (after a price was added for unpriced usage, or on upgrade).

A correction (usage.corrections, decision 021) reaches :func:`record` as retracted events: each is *reversed* —
its quantities taken out of its call's row at exactly what they were charged when they arrived (a linear price's
rate, which the plan version of its day still gives; a tiered quantity's own charge, kept per event in
``billing_tieredcharge`` because it depended on the position then) — so a session's cost stays the sum of what
its remaining usage was charged, and no other call's cost moves. Tier positions are not rewound: the quantities
priced after the retracted one keep their prices, and the period's invoice, which prices the rollups, differs
from Σ calls by what :func:`period_reconciliation` already shows as tier effects.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson
from django.db import connection, transaction
from django.db.models import Sum

from billing import period_pricing, periods, pricing
from billing.models import PRECISE, CallCost, TieredCharge, TierPosition
from billing.unpriced import NO_PLAN, NO_PRICE, NO_PROVIDER_RATE
from tenants.models import Agent, Tenant
from usage import rollups
from usage.changes import UsageChange
from usage.models import UsageEvent
from usage.validation import MAX_PAST

ZERO = Decimal(0)
PLACES = Decimal(1).scaleb(-PRECISE["decimal_places"])  # what a stored precise amount keeps
# An advisory lock per tenant: every ingest transaction takes it shared, a rebuild exclusive, so no batch
# prices usage while its period is being recomputed (and none waits on another batch for it).
LOCK_CLASS = 17_001


class Usage(Protocol):
    """What record() reads of each stored event (an EventRecord)."""

    event_id: str
    timestamp: datetime
    session_id: str
    provider: str
    model: str
    usage: dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """How one (segment, meter, provider, model) is priced: the price and the provider rate, or why not."""

    price: pricing.Price | None
    rate: pricing.ProviderRate | None
    reason: str  # "" when priced; billing.unpriced's reasons otherwise
    # A linear price's charge for q is q × numerator / denominator × multiplier: the very operations, in the
    # same order, of pricing.marginal_charge (so the result is the same to the last digit), without its
    # per-call checks; a rebuild prices millions of quantities.
    linear: tuple[Decimal, Decimal, Decimal] | None = None
    bounds: tuple = ()  # a tiered price's tiers for pricing.marginal_tiered

    def linear_cost(self, quantity: Decimal) -> Decimal:
        """A linear price's charge for ``quantity`` (in the caller's 60-digit context)."""
        numerator, denominator, multiplier = self.linear
        cost = quantity * numerator / denominator
        return cost * multiplier if multiplier != 1 else cost

    @classmethod
    def priced(cls, price: pricing.Price, rate: pricing.ProviderRate | None) -> Verdict:
        match price.price_model:
            case pricing.PriceModel.PER_UNIT:
                linear = (price.unit_amount, price.unit_size, Decimal(1))
            case pricing.PriceModel.PACKAGE:
                linear = (price.package_amount, price.package_size, Decimal(1))
            case pricing.PriceModel.COST_PLUS:
                assert rate is not None
                linear = (rate.cost_per_unit, rate.unit_size, 1 + price.markup)
            case _:
                return cls(price, rate, "", None, pricing.tier_bounds(price))
        return cls(price, rate, "", linear)


class Pricer:
    """The plan versions, prices and provider rates a batch needs, loaded once per period it touches."""

    def __init__(self, tenant: Tenant, rates: list | None = None):
        self.tenant = tenant
        self.currency = tenant.currency
        self.zone = ZoneInfo(tenant.timezone)
        self.rates = rates if rates is not None else period_pricing.provider_rates(self.currency)
        self._segments: dict[date, list[period_pricing.Segment]] = {}
        self._plans: dict[int, pricing.Plan] = {}
        self._verdicts: dict[tuple[date, date, tuple[str, str, str]], Verdict] = {}
        self._by_day: dict[tuple[date, tuple[str, str, str]], tuple[date, Verdict]] = {}

    def segments(self, period: date) -> list[period_pricing.Segment]:
        if period not in self._segments:
            found = period_pricing.plan_segments(self.tenant, period, periods.next_month(period))
            period_pricing.load_prices(found)
            self._segments[period] = found
        return self._segments[period]

    def plan(self, segment: period_pricing.Segment) -> pricing.Plan:
        assert segment.version is not None
        if segment.version.pk not in self._plans:
            self._plans[segment.version.pk] = period_pricing.plan_for(segment.version, self.currency)
        return self._plans[segment.version.pk]

    def verdict(self, day: date, key: tuple[str, str, str]) -> tuple[date, Verdict]:
        """The period ``day`` falls in and how ``key`` is priced on that day."""
        found = self._by_day.get((day, key))
        if found is None:
            found = self._by_day[(day, key)] = self._verdict(day, key)
        return found

    def _verdict(self, day: date, key: tuple[str, str, str]) -> tuple[date, Verdict]:
        period = periods.month_start(day)
        segment = next((s for s in self.segments(period) if s.start <= day < s.end), None)
        start = segment.start if segment else period
        cached = (period, start, key)
        if cached not in self._verdicts:
            usage_key = pricing.UsageKey(*key)
            rate = pricing.match_rate(self.rates, usage_key, on=start, currency=self.currency)
            if segment is None or segment.version is None:
                verdict = Verdict(None, rate, NO_PLAN)
            else:
                price = pricing.match_price(self.plan(segment).prices, usage_key)
                if price is None:
                    verdict = Verdict(None, rate, NO_PRICE)
                elif price.price_model is pricing.PriceModel.COST_PLUS and rate is None:
                    verdict = Verdict(None, None, NO_PROVIDER_RATE)
                else:
                    verdict = Verdict.priced(price, rate)
            self._verdicts[cached] = verdict
        return period, self._verdicts[cached]

    def pooled_so_far(self, period: date, price: pricing.Price) -> Decimal:
        """Usage the price matched in ``period`` according to the rollups (what a position starts from when the
        first batch after an upgrade, or of a new period, meets it)."""
        pooled = ZERO
        for segment in self.segments(period):
            if segment.version is None or price not in self.plan(segment).prices:
                continue
            usage, _ = rollups.period_usage(
                self.tenant.pk,
                periods.local_midnight(segment.start, self.tenant.timezone),
                periods.local_midnight(segment.end, self.tenant.timezone),
            )
            plan = self.plan(segment)
            for key, quantity in usage.items():
                matched = pricing.match_price(plan.prices, pricing.UsageKey(*key))
                if matched is not None and matched.id == price.id:
                    pooled += quantity
        return pooled


@dataclass
class Item:
    """One quantity of one event priced by a tiered price: these are priced one by one, in receipt order."""

    event_id: str
    timestamp: datetime
    session_id: str
    key: tuple[str, str, str]
    quantity: Decimal
    period: date
    verdict: Verdict


@dataclass
class Totals:
    """What a batch (or a rebuild) adds to ``billing_callcost``, and its unpriced report."""

    rows: dict[tuple[str, date, str, str, str], list[Decimal]] = field(
        default_factory=lambda: defaultdict(lambda: [ZERO] * 5)
    )
    unpriced: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    # What each event's tiered quantities were charged: event id → (its timestamp, meter → cost).
    charges: dict[str, tuple[datetime, dict[str, Decimal]]] = field(default_factory=dict)

    def add(self, row_key: tuple, verdict: Verdict, quantity: Decimal, cost: Decimal | None) -> None:
        row = self.rows[row_key]
        row[0] += quantity
        if cost is None:
            row[2] += quantity
        else:
            row[1] += cost
        rate = verdict.rate
        if rate is None:
            row[4] += quantity
        else:
            row[3] += quantity * rate.cost_per_unit / rate.unit_size


@dataclass
class Sorted:
    """A batch's quantities as pricing needs them: linear and unpriced ones summed per call and key (their cost
    does not depend on order), tiered ones one by one in receipt order."""

    summed: dict[tuple, list] = field(
        default_factory=dict
    )  # (session, period, key, id(verdict)) → [q, verdict]
    tiered: list[Item] = field(default_factory=list)
    unpriced: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)


def sort_events(
    pricer: Pricer, events: Iterable[tuple[str, datetime, str, str, str, dict[str, Any]]]
) -> Sorted:
    """Each non-zero quantity of ``events`` — (event id, timestamp, session id, provider, model, usage), in
    receipt order — with the price its tenant-local day uses."""
    found = Sorted()
    summed, tiered, unpriced = found.summed, found.tiered, found.unpriced
    zone, verdict_for = pricer.zone, pricer.verdict
    for event_id, timestamp, session_id, provider, model, usage in events:
        day = timestamp.astimezone(zone).date()
        for meter, raw in usage.items():
            quantity = Decimal(raw) if isinstance(raw, str) else Decimal(str(raw))
            if not quantity:
                continue
            key = (meter, provider, model)
            period, verdict = verdict_for(day, key)
            if verdict.bounds:
                tiered.append(Item(event_id, timestamp, session_id, key, quantity, period, verdict))
                continue
            if verdict.price is None:
                unpriced[(*key, verdict.reason)] += 1
            group = (session_id, period, key, id(verdict))
            entry = summed.get(group)
            if entry is None:
                summed[group] = [quantity, verdict]
            else:
                entry[0] += quantity
    return found


def price_sorted(found: Sorted, positions: dict[tuple[date, Any], Decimal], totals: Totals) -> None:
    """Price a batch at the marginal rate (decision 017): a linear price's summed quantity at its unit price
    (the operations of pricing.marginal_charge, in its order), tiered quantities one by one from the price's
    position, which they move."""
    with localcontext(prec=pricing.PRECISION):
        for (session_id, period, key, _), (quantity, verdict) in found.summed.items():
            cost = None if verdict.price is None else verdict.linear_cost(quantity)
            totals.add((session_id, period, *key), verdict, quantity, cost)
        for item in found.tiered:
            verdict = item.verdict
            price = verdict.price
            where = (item.period, price.id)
            position = positions[where]
            cost = pricing.marginal_tiered(
                verdict.bounds, price.unit_size, price.price_model, position, item.quantity
            )
            positions[where] = position + item.quantity
            totals.add((item.session_id, item.period, *item.key), verdict, item.quantity, cost)
            totals.charges.setdefault(item.event_id, (item.timestamp, {}))[1][item.key[0]] = cost
        totals.unpriced.update(found.unpriced)


# Per process: the tenant's Pricer (plan segments, prices, verdicts) and the provider rates, for as long as the
# catalogue generation (migration billing 0008: a new random token whenever a plan, price, tier, subscription
# or rate changes) is the one they were loaded under. Checked with the batch's advisory lock, in one query.
_PRICERS: OrderedDict[tuple, Pricer] = OrderedDict()
_RATES: dict[tuple[str, str], list] = {}
_CACHE_LOCK = threading.Lock()
CACHED_TENANTS = 256


def _begin(tenant: Tenant) -> Pricer:
    """Take the tenant's shared advisory lock and the pricing state for this batch (cached when current)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock_shared(%s, %s), "
            "(SELECT token::text FROM billing_cataloguegeneration WHERE id = 1)",
            [LOCK_CLASS, tenant.pk],
        )
        token = cursor.fetchone()[1]
    if token is None:  # the row was truncated (a test's flush): nothing to trust a cache with
        return Pricer(tenant)
    key = (tenant.pk, tenant.currency, tenant.timezone, token)
    with _CACHE_LOCK:
        pricer = _PRICERS.get(key)
        if pricer is not None:
            _PRICERS.move_to_end(key)
            return pricer
        rates = _RATES.get((tenant.currency, token))
    if rates is None:
        rates = period_pricing.provider_rates(tenant.currency)
    pricer = Pricer(tenant, rates)
    with _CACHE_LOCK:
        for stale in [k for k in _RATES if k[1] != token]:
            del _RATES[stale]
        _RATES[(tenant.currency, token)] = rates
        _PRICERS[key] = pricer
        while len(_PRICERS) > CACHED_TENANTS:
            _PRICERS.popitem(last=False)
    return pricer


def record(tenant: Tenant, agent: Agent, change: UsageChange) -> dict[str, Any]:
    """The usage hook: price the transaction's stored events (receipt order) and add them to the session costs,
    reverse its retracted ones; return ``{"unpriced": [...]}`` when some stored quantity has no price (``{}``
    otherwise)."""
    if not change:
        return {}
    pricer = _begin(tenant)
    totals = Totals()
    if change.stored:
        found = sort_events(pricer, (_row(r) for r in change.stored))
        positions = _take_positions(tenant, pricer, found.tiered)
        taken = dict(positions)
        price_sorted(found, positions, totals)
        _save_positions(tenant, {k: v for k, v in positions.items() if v != taken[k]})
    if change.retracted:
        _reverse(tenant, pricer, change.retracted, totals)
    _save_totals(tenant, totals)
    if change.retracted:
        _drop_empty_rows(tenant, totals)
    return unpriced_report(totals)


def _row(event: Usage) -> tuple[str, datetime, str, str, str, dict[str, Any]]:
    return (event.event_id, event.timestamp, event.session_id, event.provider, event.model, event.usage)


def _reverse(tenant: Tenant, pricer: Pricer, retracted: Sequence[Usage], totals: Totals) -> None:
    """Take each retracted event's quantities out of its call's row at what they were charged on arrival: a
    tiered quantity at its own charge (``billing_tieredcharge``), a linear one at the rate of its day's price
    (the same unless the catalogue was edited in place since, after which decision 017 asks for a rebuild
    anyway), an unpriced one as unpriced. A tiered quantity stored before its charge was kept (or after it was
    pruned) goes at its row's average price. Positions are not rewound."""
    charged = dict(
        TieredCharge.objects.for_tenant(tenant)
        .filter(event_id__in=[r.event_id for r in retracted])
        .values_list("event_id", "charges")
    )
    with localcontext(prec=pricing.PRECISION):
        for event in retracted:
            day = event.timestamp.astimezone(pricer.zone).date()
            for meter, raw in event.usage.items():
                quantity = Decimal(raw) if isinstance(raw, str) else Decimal(str(raw))
                if not quantity:
                    continue
                key = (meter, event.provider, event.model)
                period, verdict = pricer.verdict(day, key)
                row_key = (event.session_id, period, *key)
                if (cost_text := charged.get(event.event_id, {}).get(meter)) is not None:
                    cost = Decimal(cost_text)
                elif verdict.price is None:
                    cost = None
                elif verdict.linear is not None:
                    cost = verdict.linear_cost(quantity)
                else:
                    cost = _average_cost(tenant, row_key, quantity)
                totals.add(row_key, verdict, -quantity, None if cost is None else -cost)


def _average_cost(tenant: Tenant, row_key: tuple, quantity: Decimal) -> Decimal | None:
    session_id, period, meter, provider, model = row_key
    row = (
        CallCost.objects.for_tenant(tenant)
        .filter(session_id=session_id, period_start=period, meter=meter, provider=provider, model=model)
        .first()
    )
    priced = row.quantity - row.unpriced_quantity if row is not None else ZERO
    return row.cost * quantity / priced if priced > 0 else None


_DROP_EMPTY_SQL = """
DELETE FROM billing_callcost c
USING jsonb_to_recordset(%(rows)s::jsonb) AS x(session_id text, period_start date, meter text, provider text,
      model text)
WHERE c.tenant_id = %(tenant)s AND c.session_id = x.session_id AND c.period_start = x.period_start
  AND c.meter = x.meter AND c.provider = x.provider AND c.model = x.model
  AND c.quantity = 0 AND c.cost = 0 AND c.unpriced_quantity = 0 AND c.provider_cost = 0
  AND c.uncosted_quantity = 0
"""


def _drop_empty_rows(tenant: Tenant, totals: Totals) -> None:
    """A call's row that a correction emptied goes (its usage is as if it had never come)."""
    if not totals.rows:
        return
    rows = [
        {"session_id": s, "period_start": p.isoformat(), "meter": m, "provider": pr, "model": mo}
        for s, p, m, pr, mo in totals.rows
    ]
    with connection.cursor() as cursor:
        cursor.execute(_DROP_EMPTY_SQL, {"tenant": tenant.pk, "rows": orjson.dumps(rows).decode()})


def unpriced_report(totals: Totals) -> dict[str, Any]:
    if not totals.unpriced:
        return {}
    return {
        "unpriced": [
            {"meter": meter, "provider": provider, "model": model, "events": count, "reason": reason}
            for (meter, provider, model, reason), count in sorted(totals.unpriced.items())
        ]
    }


_POSITIONS_SQL = """
SELECT period_start, price_id, quantity FROM billing_tierposition
WHERE tenant_id = %(tenant)s AND (period_start, price_id) IN (
    SELECT x.period_start, x.price_id FROM jsonb_to_recordset(%(keys)s::jsonb) AS x(period_start date, price_id bigint)
)
ORDER BY period_start, price_id
FOR UPDATE
"""

_NEW_POSITIONS_SQL = """
INSERT INTO billing_tierposition (tenant_id, period_start, price_id, quantity)
SELECT %(tenant)s, x.period_start, x.price_id, x.quantity
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(period_start date, price_id bigint, quantity numeric)
ORDER BY x.period_start, x.price_id
ON CONFLICT (tenant_id, period_start, price_id) DO NOTHING
RETURNING period_start, price_id
"""


def _positions_json(keys: Iterable[tuple[date, Any]], quantities: dict | None = None) -> str:
    """(period, price id) keys, with their quantities when given, as the JSON the position statements read."""
    rows = []
    for period, price_id in keys:
        row: dict[str, Any] = {"period_start": period.isoformat(), "price_id": price_id}
        if quantities is not None:
            row["quantity"] = str(quantities[(period, price_id)])
        rows.append(row)
    return orjson.dumps(rows).decode()


def _take_positions(tenant: Tenant, pricer: Pricer, items: Sequence[Item]) -> dict[tuple[date, Any], Decimal]:
    """The tier positions the batch's tiered ``items`` move, locked until it commits (created from the rollups
    when new)."""
    prices = {(i.period, i.verdict.price.id): i.verdict.price for i in items}
    wanted = sorted(prices)
    if not wanted:
        return {}
    params = {"tenant": tenant.pk, "keys": _positions_json(wanted)}
    with connection.cursor() as cursor:
        cursor.execute(_POSITIONS_SQL, params)
        positions = {(p, pk): q for p, pk, q in cursor.fetchall()}
        missing = [k for k in wanted if k not in positions]
        if missing:
            own: dict[tuple[date, Any], Decimal] = defaultdict(Decimal)
            for item in items:
                own[(item.period, item.verdict.price.id)] += item.quantity
            # The rollups already hold this batch (same transaction): the position is what came before it.
            starts = {k: pricer.pooled_so_far(k[0], prices[k]) - own[k] for k in missing}
            cursor.execute(_NEW_POSITIONS_SQL, {"tenant": tenant.pk, "rows": _positions_json(starts, starts)})
            created = {(p, pk) for p, pk in cursor.fetchall()}
            positions.update({k: starts[k] for k in created})
            if raced := [k for k in missing if k not in created]:  # created by a batch that just committed
                cursor.execute(_POSITIONS_SQL, {**params, "keys": _positions_json(raced)})
                positions.update({(p, pk): q for p, pk, q in cursor.fetchall()})
    return positions


_SAVE_POSITIONS_SQL = """
INSERT INTO billing_tierposition (tenant_id, period_start, price_id, quantity)
SELECT %(tenant)s, x.period_start, x.price_id, x.quantity
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(period_start date, price_id bigint, quantity numeric)
ORDER BY x.period_start, x.price_id
ON CONFLICT (tenant_id, period_start, price_id) DO UPDATE SET quantity = EXCLUDED.quantity
"""

_SAVE_TOTALS_SQL = """
INSERT INTO billing_callcost (tenant_id, session_id, period_start, meter, provider, model, quantity, cost,
                              unpriced_quantity, provider_cost, uncosted_quantity)
SELECT %(tenant)s, x.session_id, x.period_start, x.meter, x.provider, x.model, x.quantity, x.cost,
       x.unpriced_quantity, x.provider_cost, x.uncosted_quantity
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(session_id text, period_start date, meter text, provider text,
     model text, quantity numeric, cost numeric, unpriced_quantity numeric, provider_cost numeric,
     uncosted_quantity numeric)
ORDER BY x.session_id, x.period_start, x.meter, x.provider, x.model
ON CONFLICT (tenant_id, session_id, period_start, meter, provider, model) DO UPDATE
   SET quantity = billing_callcost.quantity + EXCLUDED.quantity,
       cost = billing_callcost.cost + EXCLUDED.cost,
       unpriced_quantity = billing_callcost.unpriced_quantity + EXCLUDED.unpriced_quantity,
       provider_cost = billing_callcost.provider_cost + EXCLUDED.provider_cost,
       uncosted_quantity = billing_callcost.uncosted_quantity + EXCLUDED.uncosted_quantity
"""


def _save_positions(tenant: Tenant, positions: dict[tuple[date, Any], Decimal]) -> None:
    if not positions:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _SAVE_POSITIONS_SQL, {"tenant": tenant.pk, "rows": _positions_json(positions, positions)}
        )


# _SAVE_TOTALS_SQL with the batch's tiered charges kept in the same statement (no round trip more for tiers).
_SAVE_TOTALS_AND_CHARGES_SQL = f"""
WITH charged AS (
    INSERT INTO billing_tieredcharge (tenant_id, event_id, timestamp, charges)
    SELECT %(tenant)s, x.event_id, x.timestamp, x.charges
    FROM jsonb_to_recordset(%(charges)s::jsonb) AS x(event_id text, timestamp timestamptz, charges jsonb)
    ORDER BY x.event_id
    ON CONFLICT (tenant_id, event_id) DO UPDATE SET timestamp = EXCLUDED.timestamp, charges = EXCLUDED.charges
){_SAVE_TOTALS_SQL}"""  # noqa: S608 - constant SQL fragments only


def _precise(value: Decimal) -> str:
    return str(value.quantize(PLACES, rounding=ROUND_HALF_UP))


def _save_totals(tenant: Tenant, totals: Totals) -> None:
    if not totals.rows:  # a batch with tiered charges has rows too
        return
    names = ("quantity", "cost", "unpriced_quantity", "provider_cost", "uncosted_quantity")
    rows = [
        {
            "session_id": session_id,
            "period_start": period.isoformat(),
            "meter": meter,
            "provider": provider,
            "model": model,
            **{name: _precise(value) for name, value in zip(names, values, strict=True)},
        }
        for (session_id, period, meter, provider, model), values in totals.rows.items()
    ]
    params = {"tenant": tenant.pk, "rows": orjson.dumps(rows).decode()}
    if totals.charges:
        charges = [
            {"event_id": event_id, "timestamp": at, "charges": {m: _precise(c) for m, c in costs.items()}}
            for event_id, (at, costs) in totals.charges.items()
        ]
        params["charges"] = orjson.dumps(charges).decode()
    with connection.cursor() as cursor:
        cursor.execute(_SAVE_TOTALS_AND_CHARGES_SQL if totals.charges else _SAVE_TOTALS_SQL, params)


@dataclass
class Rebuilt:
    events: int
    rows: int


REBUILD_CHUNK = 20_000


def rebuild(tenant: Tenant, since: date | None = None) -> Rebuilt:
    """Recompute the tenant's per-call costs from its stored events that count (retracted ones left out) in
    receipt order (their ids), for the periods from the one containing ``since`` on (all by default), with
    today's plans and rates. Ingest of the tenant waits while it runs (an advisory lock), so no batch is priced
    twice or against a half-built position."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_CLASS, tenant.pk])
        first = periods.month_start(since) if since else date.min
        CallCost.objects.for_tenant(tenant).filter(period_start__gte=first).delete()
        TierPosition.objects.for_tenant(tenant).filter(period_start__gte=first).delete()
        charges = TieredCharge.objects.for_tenant(tenant)
        if since:
            charges = charges.filter(timestamp__gte=periods.local_midnight(first, tenant.timezone))
        charges.delete()
        events = UsageEvent.objects.for_tenant(tenant).filter(retracted_at__isnull=True).order_by("id")
        if since:
            events = events.filter(
                timestamp__gte=periods.local_midnight(first, tenant.timezone) - timedelta(days=1)
            )
        pricer = Pricer(tenant)
        positions: dict[tuple[date, Any], Decimal] = defaultdict(Decimal)
        count = 0
        chunk: list[tuple] = []
        rows = events.values_list("event_id", "timestamp", "session_id", "provider", "model", "usage")
        for row in rows.iterator(chunk_size=5000):
            chunk.append(row)
            if len(chunk) == REBUILD_CHUNK:
                _rebuild_chunk(tenant, pricer, chunk, positions, first)
                count += len(chunk)
                chunk = []
        _rebuild_chunk(tenant, pricer, chunk, positions, first)
        count += len(chunk)
        _save_positions(tenant, {k: v for k, v in positions.items() if v})
    return Rebuilt(count, CallCost.objects.for_tenant(tenant).filter(period_start__gte=first).count())


def _rebuild_chunk(tenant, pricer, chunk, positions, first) -> None:
    found = sort_events(pricer, chunk)
    found.summed = {k: v for k, v in found.summed.items() if k[1] >= first}
    found.tiered = [i for i in found.tiered if i.period >= first]
    totals = Totals()
    price_sorted(found, positions, totals)
    _save_totals(tenant, totals)


def prune_charges(now: datetime) -> int:
    """Forget the tiered charges of events too old to be corrected (a day of margin); returns how many."""
    deleted, _ = TieredCharge.objects.filter(timestamp__lt=now - MAX_PAST - timedelta(days=1)).delete()
    return deleted


@dataclass(frozen=True)
class Reconciliation:
    """Σ call costs of a period against its (draft) invoice: the difference is "rounding and period fees"."""

    calls: Decimal
    total: Decimal
    base_fee: Decimal
    agent_fee: Decimal
    minimums: Decimal
    discounts: Decimal = ZERO  # ≤ 0 (decision 019)
    tax: Decimal = ZERO  # exclusive tax added

    @property
    def period_fees(self) -> Decimal:
        """Everything the invoice holds beyond the calls' own costs (may be negative: allowances)."""
        return self.total - self.calls

    @property
    def adjustments(self) -> Decimal:
        """Allowances, tier flat amounts, whole packages and rounding: period fees that are not a fee, discount
        or tax line."""
        return self.period_fees - self.base_fee - self.agent_fee - self.minimums - self.discounts - self.tax


def period_calls(tenant: Tenant, period: date) -> Decimal:
    """Σ per-call costs of a period, at full precision."""
    return calls_sum(tenant, CallCost.objects.for_tenant(tenant).filter(period_start=period))


# Per process, Σ cost of recently asked sets of call-cost rows (a month of a large tenant is 10⁶ rows, a few
# hundred milliseconds to add up), each with the tenant's state it was read in: the catalogue token and the
# tenant's generation (period_pricing.tenant_state), which every write of its call costs changes in the writing
# transaction (migration billing 0021) — as spend.control caches the unbilled usage. A read after an accepted
# batch or a rebuild adds up again; every other read adds up nothing.
_SUMS: OrderedDict[tuple, tuple[tuple, Decimal]] = OrderedDict()
_SUMS_LOCK = threading.Lock()
CACHED_SUMS = 1024


def calls_sum(tenant: Tenant, rows) -> Decimal:
    """Σ ``cost`` of ``rows`` (a queryset of the tenant's CallCost), cached per process while the tenant's state
    holds. The cache is keyed by the rows' SQL, so any filter is a key of its own."""
    state = period_pricing.tenant_state(tenant.pk)
    sql, params = rows.query.sql_with_params()
    key = (tenant.pk, sql, tuple(str(p) for p in params))
    if state is not None:
        with _SUMS_LOCK:
            found = _SUMS.get(key)
            if found is not None and found[0] == state:
                _SUMS.move_to_end(key)
                return found[1]
    total = rows.aggregate(c=Sum("cost"))["c"] or ZERO
    if state is not None:
        with _SUMS_LOCK:
            _SUMS[key] = (state, total)
            _SUMS.move_to_end(key)
            while len(_SUMS) > CACHED_SUMS:
                _SUMS.popitem(last=False)
    return total


def reconcile(tenant: Tenant, period: date, priced: period_pricing.PricedPeriod) -> Reconciliation:
    by_kind: dict[str, Decimal] = defaultdict(Decimal)
    for line in priced.lines:
        by_kind[line.kind] += line.amount
    return Reconciliation(
        calls=period_calls(tenant, period),
        total=priced.total,
        base_fee=by_kind["base_fee"],
        agent_fee=by_kind["agent_fee"],
        minimums=by_kind["minimum"],
        discounts=by_kind["discount"],
        tax=by_kind["tax"],
    )
