"""Invoices: price a tenant's period from rollups, keep drafts current, finalize, carry late usage (DESIGN §6).

Load, compute, store: usage comes from usage.selectors, prices from the plan versions in force, the arithmetic
from billing.pricing (pure). Every entry point is idempotent and runs in one transaction under a row lock on
the invoice, so running it twice, or again after a worker died half-way, gives the same invoice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Prefetch, Q
from django.utils import timezone

from billing import periods, pricing, stripe_sync
from billing.models import (
    Invoice,
    InvoiceLine,
    InvoiceNumberSequence,
    PlanVersion,
    Price,
    PricePlan,
    PriceTier,
    ProviderRate,
    Subscription,
)
from tenants.models import Tenant
from usage import rollups as selectors

logger = logging.getLogger(__name__)

GRACE_PERIOD = timedelta(hours=24)
# Events are accepted up to 35 days late, so only the two periods before the current one can still receive
# usage after they were finalized.
LATE_USAGE_PERIODS = 2


@dataclass(frozen=True)
class Segment:
    """A stretch of a period priced under one plan version (plan changes and new versions split periods)."""

    start: date
    end: date
    version: PlanVersion | None


@dataclass
class LineDraft:
    kind: str
    description: str
    amount: Decimal
    unrounded_amount: Decimal
    segment: Segment
    meter: str = ""
    provider: str = ""
    model: str = ""
    quantity: Decimal = Decimal(0)
    allowance: Decimal = Decimal(0)
    billable_quantity: Decimal = Decimal(0)
    unit_price: Decimal | None = None
    unit_size: Decimal = Decimal(1)
    platform_cost: Decimal | None = None
    price_snapshot: dict = field(default_factory=dict)
    adjusted_period_start: date | None = None
    adjusts_kind: str = ""

    @property
    def group(self) -> tuple:
        return (self.adjusts_kind or self.kind, self.meter, self.provider, self.model, self.segment.start)


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


# --- loading ------------------------------------------------------------------------------------------------


def plan_segments(tenant: Tenant, start: date, end: date, plan: PricePlan | None = None) -> list[Segment]:
    """The plan versions in force over [start, end): from the tenant's subscriptions, or ``plan`` if given."""
    if plan is not None:
        stretches = [(start, end, plan)]
    else:
        subscriptions = (
            Subscription.objects.for_tenant(tenant)
            .filter(starts_on__lt=end)
            .filter(Q(ends_on__isnull=True) | Q(ends_on__gt=start))
            .select_related("plan")
            .order_by("starts_on")
        )
        stretches = [(max(s.starts_on, start), min(s.ends_on or end, end), s.plan) for s in subscriptions]
    segments = []
    for stretch_start, stretch_end, stretch_plan in stretches:
        versions = list(
            stretch_plan.versions.filter(effective_from__lt=stretch_end).order_by("effective_from")
        )
        bounds = [v for v in versions if v.effective_from > stretch_start]
        current = next((v for v in reversed(versions) if v.effective_from <= stretch_start), None)
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


def _versions_with_prices(segments: list[Segment]) -> None:
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
    return [
        pricing.ProviderRate(
            r.provider,
            r.model_pattern,
            r.meter_id,
            r.cost_per_unit,
            r.unit_size,
            r.effective_from,
            r.currency,
        )
        for r in ProviderRate.objects.filter(currency=currency)
    ]


def _snapshot(price: pricing.Price | None) -> dict:
    if price is None:
        return {}
    data = dataclasses.asdict(price)
    data["tiers"] = [{k: (str(v) if v is not None else None) for k, v in t.items()} for t in data["tiers"]]
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in data.items()}


# --- pricing a period -----------------------------------------------------------------------------------------


def price_period(
    tenant: Tenant, start: date, end: date, *, plan: PricePlan | None = None, rates: list | None = None
) -> PricedPeriod:
    """Price [start, end) of the tenant's usage under its subscriptions (or under ``plan``, for previews)."""
    currency = plan.currency if plan is not None else tenant.currency
    rates = provider_rates(currency) if rates is None else rates
    segments = plan_segments(tenant, start, end, plan)
    _versions_with_prices(segments)
    period_days = Decimal(periods.days_between(start, end))
    lines: list[LineDraft] = []
    unmatched: list[dict] = []
    covered: list[tuple[date, date]] = []
    for segment in segments:
        covered.append((segment.start, segment.end))
        begin = periods.local_midnight(segment.start, tenant.timezone)
        finish = periods.local_midnight(segment.end, tenant.timezone)
        usage, active_agents = selectors.period_usage(tenant.pk, begin, finish)
        if segment.version is None:
            unmatched += [_unmatched(k, q, "no_plan_version", segment) for k, q in sorted(usage.items()) if q]
            continue
        fraction = Decimal(periods.days_between(segment.start, segment.end)) / period_days
        plan_dc = plan_for(segment.version, currency, fraction)
        priced = pricing.price_usage(
            plan_dc,
            {pricing.UsageKey(*k): q for k, q in usage.items()},
            active_agents=active_agents,
            provider_rates=rates,
            on=segment.start,
        )
        prices_by_id = {p.id: p for p in plan_dc.prices}
        suffix = (
            "" if fraction == 1 else f" ({segment.start:%b %-d}–{segment.end - timedelta(days=1):%b %-d})"
        )
        for line in priced.lines:
            price_id = getattr(line, "price_id", None)
            lines.append(
                LineDraft(
                    kind=str(line.kind),
                    description=line.description + suffix,
                    amount=line.amount,
                    unrounded_amount=line.unrounded_amount,
                    segment=segment,
                    meter=line.meter,
                    provider=line.provider,
                    model=line.model,
                    quantity=line.quantity,
                    allowance=line.allowance,
                    billable_quantity=line.billable_quantity,
                    unit_price=line.unit_price,
                    unit_size=line.unit_size,
                    platform_cost=line.platform_cost,
                    price_snapshot=_snapshot(prices_by_id.get(price_id)),
                )
            )
        unmatched += [_unmatched(u.key, u.quantity, str(u.reason), segment) for u in priced.unmatched]
    for gap_start, gap_end in _gaps(start, end, covered):
        usage = selectors.usage_totals(
            tenant.pk,
            periods.local_midnight(gap_start, tenant.timezone),
            periods.local_midnight(gap_end, tenant.timezone),
        )
        gap = Segment(gap_start, gap_end, None)
        unmatched += [_unmatched(k, q, "no_subscription", gap) for k, q in sorted(usage.items()) if q]
    return PricedPeriod(currency, lines, unmatched)


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


# --- late usage -----------------------------------------------------------------------------------------------


def adjustment_lines(invoice: Invoice) -> list[LineDraft]:
    """Late usage of recent finalized periods, as adjustment lines for ``invoice`` (a draft).

    Each earlier period is re-priced with the usage that exists now, under the plan versions it was billed
    with, and compared per group with what was already billed for it (its own lines plus adjustments on
    other finalized invoices). The difference becomes a line labelled with the original period, so the
    finalized invoice never changes and nothing is billed twice.
    """
    earlier = (
        Invoice.objects.for_tenant(invoice.tenant)
        .finalized()
        .exclude(status=Invoice.Status.VOID)
        .filter(period_start__lt=invoice.period_start)
        .order_by("-period_start")[:LATE_USAGE_PERIODS]
    )
    lines: list[LineDraft] = []
    for past in sorted(earlier, key=lambda i: i.period_start):
        now_priced = price_period(invoice.tenant, past.period_start, past.period_end)
        billed: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0)])
        billed_lines = (
            InvoiceLine.objects.filter(
                Q(invoice=past, adjusted_period_start=None)
                | Q(adjusted_period_start=past.period_start, invoice__tenant=invoice.tenant)
            )
            .exclude(invoice=invoice)
            .exclude(invoice__status__in=[Invoice.Status.DRAFT, Invoice.Status.VOID])
            .select_related("plan_version")
        )
        examples: dict[tuple, InvoiceLine] = {}
        for line in billed_lines:
            key = (line.adjusts_kind or line.kind, line.meter, line.provider, line.model, line.segment_start)
            billed[key][0] += line.amount
            billed[key][1] += line.quantity
            billed[key][2] += line.platform_cost or 0
            examples.setdefault(key, line)
        for line in now_priced.lines:
            amount, quantity, cost = billed.pop(line.group, [Decimal(0)] * 3)
            if line.amount == amount and line.quantity == quantity:
                continue
            lines.append(
                _adjustment(
                    line,
                    past,
                    line.amount - amount,
                    line.quantity - quantity,
                    (line.platform_cost or 0) - cost,
                    line.unrounded_amount - amount,
                )
            )
        # Groups billed before that no longer exist (e.g. a minimum top-up that late usage now exceeds)
        # are credited back.
        for key, (amount, quantity, cost) in sorted(billed.items(), key=lambda item: str(item[0])):
            if not amount and not quantity:
                continue
            example = examples[key]
            gone = LineDraft(
                kind=key[0],
                description=example.description,
                amount=Decimal(0),
                unrounded_amount=Decimal(0),
                segment=Segment(example.segment_start, example.segment_end, example.plan_version),
                meter=example.meter,
                provider=example.provider,
                model=example.model,
                unit_price=example.unit_price,
                unit_size=example.unit_size,
            )
            lines.append(_adjustment(gone, past, -amount, -quantity, -cost, -amount))
    return lines


def _adjustment(line: LineDraft, past: Invoice, amount, quantity, cost, unrounded) -> LineDraft:
    return dataclasses.replace(
        line,
        kind=InvoiceLine.Kind.ADJUSTMENT,
        adjusts_kind=line.kind,
        description=f"Late usage for {past.period_start:%B %Y}: {line.description}",
        amount=amount,
        unrounded_amount=unrounded,
        quantity=quantity,
        allowance=Decimal(0),
        billable_quantity=quantity,
        platform_cost=cost,
        adjusted_period_start=past.period_start,
    )


# --- invoices ---------------------------------------------------------------------------------------------


def current_period(tenant: Tenant, now: datetime | None = None) -> tuple[date, date]:
    return periods.period_containing(now or timezone.now(), tenant.timezone)


def generate_invoice(tenant_id: int, period_start: date) -> Invoice:
    """Create or refresh the draft for the tenant's period; a finalized invoice is returned untouched."""
    with transaction.atomic():
        tenant = Tenant.objects.get(pk=tenant_id)
        start = periods.month_start(period_start)
        invoice, _ = Invoice.objects.get_or_create(
            tenant=tenant,
            period_start=start,
            defaults={"period_end": periods.next_month(start), "currency": tenant.currency},
        )
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.is_finalized:
            return invoice
        _write_lines(invoice, tenant)
        return invoice


def _write_lines(invoice: Invoice, tenant: Tenant) -> None:
    priced = price_period(tenant, invoice.period_start, invoice.period_end)
    drafts = priced.lines + adjustment_lines(invoice)
    invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=d.kind,
            description=d.description[:300],
            meter=d.meter,
            provider=d.provider,
            model=d.model,
            plan_version=d.segment.version,
            segment_start=d.segment.start,
            segment_end=d.segment.end,
            adjusted_period_start=d.adjusted_period_start,
            adjusts_kind=d.adjusts_kind,
            quantity=d.quantity,
            allowance=d.allowance,
            billable_quantity=d.billable_quantity,
            unit_price=d.unit_price,
            unit_size=d.unit_size,
            amount=d.amount,
            unrounded_amount=d.unrounded_amount,
            platform_cost=d.platform_cost,
            price_snapshot=d.price_snapshot,
        )
        for position, d in enumerate(drafts, start=1)
    )
    invoice.currency = tenant.currency
    invoice.total = sum((d.amount for d in drafts), Decimal(0))
    invoice.platform_cost = sum((d.platform_cost or Decimal(0) for d in drafts), Decimal(0))
    invoice.unmatched = priced.unmatched
    invoice.generated_at = timezone.now()
    invoice.save(update_fields=["currency", "total", "platform_cost", "unmatched", "generated_at"])


def is_due(invoice: Invoice, now: datetime) -> bool:
    return now >= periods.local_midnight(invoice.period_end, invoice.tenant.timezone) + GRACE_PERIOD


def finalize_invoice(invoice_id: int, *, now: datetime | None = None, force: bool = False) -> Invoice:
    """Snapshot the lines, assign the next gapless number and open the invoice. Idempotent.

    Without ``force`` only a period that ended more than the grace period ago is finalized ("finalize now"
    in the admin passes ``force``).
    """
    now = now or timezone.now()
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().select_related("tenant").get(pk=invoice_id)
        if invoice.is_finalized:
            return invoice
        if not force and not is_due(invoice, now):
            raise ValueError(f"{invoice} is not due before {invoice.period_end} + {GRACE_PERIOD}")
        _write_lines(invoice, invoice.tenant)
        invoice.number = _next_number(now.year)
        invoice.status = Invoice.Status.OPEN
        invoice.finalized_at = now
        invoice.status_changed_at = now
        invoice.save(update_fields=["number", "status", "finalized_at", "status_changed_at"])
        stripe_sync.sync_after_commit(invoice.pk)  # queued only if this transaction commits
        PlanVersion.objects.filter(
            pk__in=invoice.lines.exclude(plan_version=None).values("plan_version")
        ).update(is_locked=True)
    logger.info(
        "finalized %s for %s: %s %s", invoice.number, invoice.tenant.slug, invoice.total, invoice.currency
    )
    return invoice


def _next_number(year: int) -> str:
    InvoiceNumberSequence.objects.get_or_create(year=year)
    sequence = InvoiceNumberSequence.objects.select_for_update().get(year=year)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    return f"ML-{year}-{sequence.last_number:06d}"


def void_invoice(invoice_id: int, *, now: datetime | None = None) -> Invoice:
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
            raise ValueError(f"{invoice} is {invoice.status} and cannot be voided")
        invoice.status = Invoice.Status.VOID
        invoice.status_changed_at = now or timezone.now()
        invoice.save(update_fields=["status", "status_changed_at"])
    return invoice


def tenants_to_bill(now: datetime) -> list[tuple[int, date]]:
    """(tenant, period) pairs whose draft should exist and be current: this period and, until it is
    finalized, the previous one."""
    pairs = []
    for tenant in Tenant.objects.filter(status=Tenant.Status.ACTIVE, subscriptions__isnull=False).distinct():
        start, _ = current_period(tenant, now)
        pairs.append((tenant.pk, start))
        previous = periods.previous_month(start)
        if (
            not Invoice.objects.for_tenant(tenant).finalized().filter(period_start=previous).exists()
            and Subscription.objects.for_tenant(tenant).filter(starts_on__lt=start).exists()
        ):
            pairs.append((tenant.pk, previous))
    return pairs


def due_invoice_ids(now: datetime) -> list[int]:
    drafts = Invoice.objects.filter(
        status=Invoice.Status.DRAFT, period_end__lte=(now - GRACE_PERIOD).date() + timedelta(days=1)
    )
    return [invoice.pk for invoice in drafts.select_related("tenant") if is_due(invoice, now)]
