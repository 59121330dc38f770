"""Price a tenant's period: the plan versions in force, the usage from rollups, the pricing engine (DESIGN §5).

Load, compute, return: usage comes from usage.rollups, prices from the plan versions in force (subscriptions
and dated versions split a period into segments; fees, allowances and minimums are prorated), the arithmetic
from billing.pricing (pure). Nothing here writes; billing.invoicing stores what this returns.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Prefetch, Q

from billing import discounts, periods, pricing, settlement, tax_calculation, taxes
from billing.models import (
    BillingProfile,
    PlanVersion,
    Price,
    PricePlan,
    PriceTier,
    ProviderRate,
    Subscription,
)
from tenants.models import Tenant
from usage import rollups


@dataclass(frozen=True)
class Segment:
    """A stretch of a period priced under one plan version (plan changes and new versions split periods)."""

    start: date
    end: date
    version: PlanVersion | None


@dataclass(frozen=True, kw_only=True)
class LineDraft(pricing.PricedLine):
    """A line as it will be stored: the pricing engine's line, the segment it was priced in, the price it used,
    and, for an adjustment, the period and kind of line it adjusts. Its fields that InvoiceLine also has are
    stored as they are (:data:`STORED_FIELDS`)."""

    segment: Segment
    price_snapshot: dict = field(default_factory=dict)
    adjusted_period_start: date | None = None
    adjusts_kind: str = ""
    code: str = ""  # discount lines: the coupon's code

    @classmethod
    def of(cls, line: pricing.PricedLine, **changes: Any) -> LineDraft:
        return cls(**{**{f.name: getattr(line, f.name) for f in dataclasses.fields(line)}, **changes})

    @property
    def group(self) -> tuple:
        return (
            self.adjusts_kind or self.kind,
            self.meter,
            self.provider,
            self.model,
            self.segment.start,
            self.code,
        )


@dataclass
class PricedPeriod:
    currency: str
    lines: list[LineDraft]
    unmatched: list[dict]

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))

    @property
    def platform_cost(self) -> Decimal:
        return sum((line.platform_cost or Decimal(0) for line in self.lines), Decimal(0))


def plan_segments(tenant: Tenant, start: date, end: date, plan: PricePlan | None = None) -> list[Segment]:
    """The plan versions in force over [start, end): from the tenant's subscriptions, or ``plan`` if given."""
    if plan is not None:
        stretches = [(start, end, plan.pk)]
    else:
        subscriptions = (
            Subscription.objects.for_tenant(tenant)
            .filter(starts_on__lt=end)
            .filter(Q(ends_on__isnull=True) | Q(ends_on__gt=start))
            .order_by("starts_on")
        )
        stretches = [(max(s.starts_on, start), min(s.ends_on or end, end), s.plan_id) for s in subscriptions]
    versions = PlanVersion.objects.filter(plan_id__in={p for _, _, p in stretches}, effective_from__lt=end)
    return split_segments(stretches, list(versions.order_by("effective_from")))


def split_segments(stretches: list[tuple[date, date, int]], versions: list[PlanVersion]) -> list[Segment]:
    """(start, end, plan id) stretches of subscription cut where a version of their plan takes effect.
    ``versions``: at least those of the plans in force before the stretches' end, by ``effective_from``."""
    segments = []
    for stretch_start, stretch_end, plan_id in stretches:
        in_force = [v for v in versions if v.plan_id == plan_id and v.effective_from < stretch_end]
        bounds = [v for v in in_force if v.effective_from > stretch_start]
        current = next((v for v in reversed(in_force) if v.effective_from <= stretch_start), None)
        cursor = stretch_start
        for version in bounds:
            segments.append(Segment(cursor, version.effective_from, current))
            cursor, current = version.effective_from, version
        segments.append(Segment(cursor, stretch_end, current))
    return segments


def price_for(price: Price) -> pricing.Price:
    """A stored price as the pricing engine's dataclass (which also validates it)."""
    return pricing.Price(
        meter=price.meter_id,
        price_model=pricing.PriceModel(price.price_model),
        provider=price.provider,
        model_pattern=price.model_pattern,
        unit_amount=price.unit_amount,
        unit_size=price.unit_size,
        tiers=tuple(pricing.Tier(t.up_to, t.unit_amount, t.flat_amount) for t in price.tiers.all()),
        package_size=price.package_size,
        package_amount=price.package_amount,
        markup=price.markup,
        free_allowance=price.free_allowance,
        minimum_charge=price.minimum_charge,
        id=price.pk,
    )


def plan_for(version: PlanVersion, currency: str, fraction: Decimal = Decimal(1)) -> pricing.Plan:
    """The version as a pricing.Plan; fees, allowances and minimums are prorated to a split period."""
    prices = [
        dataclasses.replace(
            p, free_allowance=p.free_allowance * fraction, minimum_charge=p.minimum_charge * fraction
        )
        for p in map(price_for, version.prices.all())
    ]
    return pricing.Plan(
        currency=currency,
        prices=tuple(prices),
        base_fee=version.base_fee * fraction,
        fee_per_active_agent=version.fee_per_active_agent * fraction,
    )


def load_prices(segments: list[Segment]) -> None:
    """Each segment's plan version with its prices and their tiers, in three queries whatever the count."""
    ids = {s.version.pk for s in segments if s.version}
    if not ids:
        return
    loaded = {
        v.pk: v
        for v in PlanVersion.objects.filter(pk__in=ids).prefetch_related(
            Prefetch(
                "prices",
                queryset=Price.objects.prefetch_related(Prefetch("tiers", queryset=PriceTier.objects.all())),
            )
        )
    }
    for segment in segments:
        if segment.version:
            object.__setattr__(segment, "version", loaded[segment.version.pk])


def provider_rates(currency: str) -> list[pricing.ProviderRate]:
    """The provider rates in ``currency`` (the imported price list holds hundreds; :func:`_rates_for` keeps
    those a period's usage can match)."""
    return rates_by_currency({currency}).get(currency, [])


def rates_by_currency(currencies: set[str]) -> dict[str, list[pricing.ProviderRate]]:
    """:func:`provider_rates` of several currencies in one query."""
    rows = (
        ProviderRate.objects.filter(currency__in=currencies)
        .order_by("pk")
        .values_list(
            "provider",
            "model_pattern",
            "meter_id",
            "cost_per_unit",
            "unit_size",
            "effective_from",
            "currency",
        )
    )
    found: dict[str, list[pricing.ProviderRate]] = {}
    for row in rows:
        found.setdefault(row[-1], []).append(pricing.ProviderRate(*row))
    return found


def _snapshot(price: pricing.Price | None) -> dict:
    if price is None:
        return {}
    data = dataclasses.asdict(price)
    data["tiers"] = [{k: (str(v) if v is not None else None) for k, v in t.items()} for t in data["tiers"]]
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in data.items()}


@dataclass(frozen=True)
class _Inputs:
    """What pricing a tenant's period reads besides its usage: the currency, the segments with their versions' prices loaded,
    each segment's engine plan, the provider rates of the currency, the coupons and the tax in force."""

    currency: str
    segments: list[Segment]
    plans: dict[int, pricing.Plan]  # by segment index
    prices: dict[int, dict]  # by segment index: price id → engine price (the lines' snapshots)
    rates: list[pricing.ProviderRate]
    coupons: list
    tax: settlement.Tax | None


# Per process, for as long as the catalogue generation is the one they were loaded under (migrations billing
# 0008 and 0015: a new random token whenever a plan, version, price, tier, subscription, provider rate, coupon,
# applied coupon, billing profile or tax rate changes, by statement triggers): the inputs of recent periods.
_INPUTS: OrderedDict[tuple, _Inputs] = OrderedDict()
_INPUTS_LOCK = threading.Lock()
CACHED_PERIODS = 512


def catalogue_token() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT token::text FROM billing_cataloguegeneration WHERE id = 1")
        row = cursor.fetchone()
    return row[0] if row else None


def tenant_state(tenant_id: int) -> tuple[str, tuple[int, ...]] | None:
    """What a tenant's priced periods depend on besides the clock, as one comparable value: the catalogue token
    and the tenant's own generation (migration billing 0016: one of its slots gets a new value whenever its
    rollups or its invoices change, in the transaction that changes them; empty before it has any). None without
    a catalogue token (nothing to trust a cache with). One query."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT (SELECT token::text FROM billing_cataloguegeneration WHERE id = 1),
                   ARRAY(SELECT token FROM billing_tenantgeneration WHERE tenant_id = %s ORDER BY slot)
            """,
            [tenant_id],
        )
        catalogue, own = cursor.fetchone()
    if catalogue is None:
        return None
    return catalogue, tuple(own)


def _load_inputs(
    tenant: Tenant, start: date, end: date, currency: str, plan: PricePlan | None = None
) -> _Inputs:
    """Read the inputs; under ``plan`` (the admin's preview) the plan alone, without coupons or tax."""
    if plan is None:
        return load_inputs([tenant], start, end)[tenant.pk]
    segments = plan_segments(tenant, start, end, plan)
    load_prices(segments)
    return _assemble(segments, start, end, currency, provider_rates(currency), [], None)


def load_inputs(tenants: list[Tenant], start: date, end: date) -> dict[int, _Inputs]:
    """What pricing [start, end) reads besides usage, for each tenant under its subscriptions and in its
    currency, in a fixed number of queries however many tenants: subscriptions, plan versions with their
    prices and tiers, provider rates, applied coupons, billing profiles and tax rates are read once for all."""
    ids = [t.pk for t in tenants]
    stretches: dict[int, list[tuple[date, date, int]]] = {pk: [] for pk in ids}
    for s in (
        Subscription.objects.filter(tenant_id__in=ids, starts_on__lt=end)
        .filter(Q(ends_on__isnull=True) | Q(ends_on__gt=start))
        .order_by("tenant_id", "starts_on")
    ):
        stretches[s.tenant_id].append((max(s.starts_on, start), min(s.ends_on or end, end), s.plan_id))
    plan_ids = {plan_id for spans in stretches.values() for _, _, plan_id in spans}
    versions = list(
        PlanVersion.objects.filter(plan_id__in=plan_ids, effective_from__lt=end)
        .order_by("effective_from")
        .prefetch_related(
            Prefetch(
                "prices",
                queryset=Price.objects.prefetch_related(Prefetch("tiers", queryset=PriceTier.objects.all())),
            )
        )
    )
    rates = rates_by_currency({t.currency for t in tenants})
    applied = discounts.applied_coupons(ids)
    profiles = {p.tenant_id: p for p in BillingProfile.objects.filter(tenant_id__in=ids)}
    tax_rates = taxes.tax_rates({p.country for p in profiles.values()})
    found, made = {}, {}
    for tenant in tenants:
        currency = tenant.currency
        coupons = [
            (c, discounts.as_discount(c, currency))
            for c in discounts.in_force_of(applied.get(tenant.pk, []), start)
        ]
        found[tenant.pk] = _assemble(
            split_segments(stretches[tenant.pk], versions),
            start,
            end,
            currency,
            rates.get(currency, []),
            [(c, d) for c, d in coupons if d is not None],
            taxes.tax_from(profiles.get(tenant.pk), tax_rates, start),
            made,
        )
    return found


def _assemble(
    segments: list[Segment],
    start: date,
    end: date,
    currency: str,
    rates,
    coupons,
    tax,
    made: dict[tuple, tuple[pricing.Plan, dict]] | None = None,
) -> _Inputs:
    """The inputs from what was read: each segment's engine plan, its fees, allowances and minimums prorated.
    ``made``: engine plans already built by (version, currency, share of the period), which tenants on the
    same plan share (building one validates every price: most of a batch's pricing time otherwise)."""
    made = {} if made is None else made
    period_days = Decimal(periods.days_between(start, end))
    plans, prices = {}, {}
    for index, segment in enumerate(segments):
        if segment.version is None:
            continue
        fraction = Decimal(periods.days_between(segment.start, segment.end)) / period_days
        key = (segment.version.pk, currency, fraction)
        if key not in made:
            plan = plan_for(segment.version, currency, fraction)
            made[key] = (plan, {p.id: p for p in plan.prices})
        plans[index], prices[index] = made[key]
    return _Inputs(currency, segments, plans, prices, rates, coupons, tax)


def _inputs(tenant: Tenant, start: date, end: date, currency: str) -> _Inputs:
    token = catalogue_token()
    if token is None:  # the row was truncated (a test's flush): nothing to trust a cache with
        return _load_inputs(tenant, start, end, currency)
    key = (tenant.pk, currency, start, end, settings.SELLER_COUNTRY, tax_calculation.is_enabled(), token)
    with _INPUTS_LOCK:
        found = _INPUTS.get(key)
        if found is not None:
            _INPUTS.move_to_end(key)
            return found
    loaded = _load_inputs(tenant, start, end, currency)
    with _INPUTS_LOCK:
        for stale in [k for k in _INPUTS if k[-1] != token]:
            del _INPUTS[stale]
        _INPUTS[key] = loaded
        while len(_INPUTS) > CACHED_PERIODS:
            _INPUTS.popitem(last=False)
    return loaded


def _rates_for(rates: list[pricing.ProviderRate], keys) -> list[pricing.ProviderRate]:
    """Of the currency's rates, those that can match one of the usage keys (same meter; same provider up to
    case, or any provider): a period uses a few of the hundreds imported."""
    meters = {key[0] for key in keys}
    providers = {key[1].casefold() for key in keys}
    return [r for r in rates if r.meter in meters and (not r.provider or r.provider.casefold() in providers)]


UsageOf = Callable[[datetime, datetime], tuple[dict[tuple[str, str, str], Decimal], int]]


def price_period(
    tenant: Tenant, start: date, end: date, *, plan: PricePlan | None = None, rates: list | None = None
) -> PricedPeriod:
    """Price [start, end) of the tenant's usage under its subscriptions (or under ``plan``, for previews).
    Under its subscriptions, what the period reads besides usage is cached per process behind the catalogue
    generation token (one query checks it), so a balance read or a dashboard prices from memory."""
    if plan is not None:
        inputs = _load_inputs(tenant, start, end, plan.currency, plan)
    else:
        inputs = _inputs(tenant, start, end, tenant.currency)
    return price_loaded(
        tenant,
        start,
        end,
        inputs,
        lambda begin, finish: rollups.period_usage(tenant.pk, begin, finish),
        rates,
    )


def usage_windows(tenant: Tenant, start: date, end: date, inputs: _Inputs) -> list[tuple[datetime, datetime]]:
    """The stretches of time whose usage :func:`price_loaded` reads (each segment, and each gap no
    subscription covers), as instants in the tenant's time zone: what a batch reads ahead for it."""
    covered = [(s.start, s.end) for s in inputs.segments]
    return [
        (periods.local_midnight(a, tenant.timezone), periods.local_midnight(b, tenant.timezone))
        for a, b in [*covered, *_gaps(start, end, covered)]
    ]


def price_loaded(
    tenant: Tenant, start: date, end: date, inputs: _Inputs, usage_of: UsageOf, rates: list | None = None
) -> PricedPeriod:
    """Price [start, end) from inputs already read and ``usage_of(begin, end)`` (usage totals and active
    agents of a stretch of the period): one tenant's period, or one of a batch read together."""
    currency = inputs.currency
    lines: list[LineDraft] = []
    unmatched: list[dict] = []
    covered: list[tuple[date, date]] = []
    for index, segment in enumerate(inputs.segments):
        covered.append((segment.start, segment.end))
        begin = periods.local_midnight(segment.start, tenant.timezone)
        finish = periods.local_midnight(segment.end, tenant.timezone)
        usage, active_agents = usage_of(begin, finish)
        if segment.version is None:
            unmatched += [_unmatched(k, q, "no_plan_version", segment) for k, q in sorted(usage.items()) if q]
            continue
        plan_dc = inputs.plans[index]
        priced = pricing.price_usage(
            plan_dc,
            {pricing.UsageKey(*k): q for k, q in usage.items()},
            active_agents=active_agents,
            provider_rates=_rates_for(inputs.rates, usage) if rates is None else rates,
            on=segment.start,
        )
        suffix = (
            ""
            if segment.start == start and segment.end == end
            else f" ({segment.start:%b %-d}–{segment.end - timedelta(days=1):%b %-d})"
        )
        lines += [
            LineDraft.of(
                line,
                kind=str(line.kind),
                description=line.description + suffix,
                segment=segment,
                price_snapshot=_snapshot(inputs.prices[index].get(line.price_id)),
            )
            for line in priced.lines
        ]
        unmatched += [_unmatched(u.key, u.quantity, str(u.reason), segment) for u in priced.unmatched]
    for gap_start, gap_end in _gaps(start, end, covered):
        usage, _ = usage_of(
            periods.local_midnight(gap_start, tenant.timezone),
            periods.local_midnight(gap_end, tenant.timezone),
        )
        gap = Segment(gap_start, gap_end, None)
        unmatched += [_unmatched(k, q, "no_subscription", gap) for k, q in sorted(usage.items()) if q]
    lines += terms_lines(start, end, currency, lines, inputs.coupons, inputs.tax)
    return PricedPeriod(currency, lines, unmatched)


def terms_lines(
    start: date,
    end: date,
    currency: str,
    lines: list[LineDraft],
    coupons: list,
    tax: settlement.Tax | None,
) -> list[LineDraft]:
    """The period's coupons (negative lines) and tax (one line) from billing.settlement's order of operations
    over the period's own lines (decision 019). ``coupons``: (coupon, settlement.Discount) pairs in force."""
    if not coupons and tax is None:
        return []
    settled = settlement.settle(
        [settlement.Line(line.amount, line.group) for line in lines],
        currency,
        discounts=[d for _, d in coupons],
        tax=tax,
    )
    whole = Segment(start, end, None)
    made = [
        LineDraft(
            kind=pricing.LineKind.DISCOUNT,
            description=coupon.name,
            amount=taken.amount,
            unrounded_amount=taken.amount,
            segment=whole,
            code=coupon.code,
            price_snapshot={
                "percent_off": None if coupon.percent_off is None else str(coupon.percent_off),
                "amount_off": None if coupon.amount_off is None else str(coupon.amount_off),
                "duration": coupon.duration,
            },
        )
        for (coupon, _), taken in zip(coupons, settled.discounts, strict=True)
        if taken.amount
    ]
    for line in settled.taxes:
        added = not line.inclusive and not line.reverse_charge
        description = line.name
        if line.inclusive:
            description = f"{line.name}: {line.amount} {currency} of the amounts above"
        made.append(
            LineDraft(
                kind=pricing.LineKind.TAX,
                description=description,
                amount=line.amount if added else Decimal(0),
                unrounded_amount=line.amount if added else Decimal(0),
                quantity=line.base,  # the taxed amount
                unit_price=line.rate * 100,  # the rate, in percent
                segment=whole,
                code="reverse-charge"
                if line.reverse_charge
                else ("inclusive" if line.inclusive else "exclusive"),
                price_snapshot={
                    "rate": str(line.rate),
                    "base": str(line.base),
                    "tax": str(line.amount),
                    "inclusive": line.inclusive,
                    "reverse_charge": line.reverse_charge,
                },
            )
        )
    return made


def _unmatched(key, quantity: Decimal, reason: str, segment: Segment) -> dict:
    meter, provider, model = key
    return {
        "meter": meter,
        "provider": provider,
        "model": model,
        "quantity": str(quantity),
        "reason": reason,
        "segment_start": segment.start.isoformat(),
        "segment_end": segment.end.isoformat(),
    }


def _gaps(start: date, end: date, covered: list[tuple[date, date]]) -> list[tuple[date, date]]:
    gaps, cursor = [], start
    for a, b in sorted(covered):
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps
