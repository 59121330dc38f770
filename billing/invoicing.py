"""Invoices: keep drafts current, finalize them with gapless numbers, void them (DESIGN §6).

A draft holds the period as billing.period_pricing prices it plus billing.late_usage's adjustments. Every entry
point is idempotent and runs in one transaction under a row lock on the invoice, so running it twice, or again
after a worker died half-way, gives the same invoice. Creating, finalizing and voiding record ``invoice.created``,
``invoice.finalized`` and ``invoice.voided`` in the outbox in the same transaction (billing.invoice_events);
what follows (the Stripe sync, tenant webhooks) subscribes to them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from billing import credits, invoice_events, periods, settlement, tax_calculation, taxes
from billing.late_usage import adjustment_lines
from billing.models import (
    BillingProfile,
    Invoice,
    InvoiceLine,
    InvoiceNumberSequence,
    PlanVersion,
    Subscription,
)
from billing.period_pricing import LineDraft, PricedPeriod, price_period
from tenants.models import Tenant

logger = logging.getLogger(__name__)

Pricer = Callable[[Tenant, date, date], PricedPeriod]

GRACE_PERIOD = timedelta(hours=24)
INVOICE_FINALIZED = invoice_events.INVOICE_FINALIZED
INVOICE_SERIES = "ML"
PERCENT_PLACES = Decimal("0.000001")  # an effective tax rate, as BillingProfile.stripe_tax_percent keeps it
# The draft's fields that InvoiceLine stores under the same name.
STORED_FIELDS = sorted(
    {f.name for f in dataclasses.fields(LineDraft)}
    & {f.name for f in InvoiceLine._meta.concrete_fields} - {"description"}
)


def current_period(tenant: Tenant, now: datetime | None = None) -> tuple[date, date]:
    return periods.period_containing(now or timezone.now(), tenant.timezone)


def generate_invoice(tenant_id: int, period_start: date, *, pricer: Pricer = price_period) -> Invoice:
    """Create or refresh the draft for the tenant's period; a finalized invoice is returned untouched.
    ``pricer`` prices a (tenant, start, end): a batch passes one that has read its tenants' periods ahead."""
    with transaction.atomic():
        tenant = Tenant.objects.get(pk=tenant_id)
        start = periods.month_start(period_start)
        invoice, created = Invoice.objects.get_or_create(
            tenant=tenant,
            period_start=start,
            defaults={"period_end": periods.next_month(start), "currency": tenant.currency},
        )
        invoice = Invoice.objects.select_for_update().get(tenant=tenant, pk=invoice.pk)
        invoice.tenant = tenant  # the row just read: what the lines read it through need not read it again
        if invoice.is_finalized:
            return invoice
        _write_lines(invoice, tenant, pricer)
        if created:
            invoice_events.record(invoice, invoice_events.INVOICE_CREATED)
        return invoice


def _delete_lines(invoice: Invoice) -> None:
    """A draft's lines, gone before it is priced again: one statement naming the tenant (decision 024), where the
    ORM would read the lines and delete them by id. A draft has no credit notes, and the database refuses the
    delete of a line one names (its foreign key)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM billing_invoiceline WHERE tenant_id = %s AND invoice_id = %s",
            [invoice.tenant_id, invoice.pk],
        )


def _write_lines(invoice: Invoice, tenant: Tenant, pricer: Pricer) -> None:
    priced = pricer(tenant, invoice.period_start, invoice.period_end)
    drafts = priced.lines + adjustment_lines(invoice, pricer)
    _delete_lines(invoice)
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            **{name: getattr(d, name) for name in STORED_FIELDS},
            tenant_id=invoice.tenant_id,
            invoice=invoice,
            position=position,
            description=d.description[:300],
            plan_version=d.segment.version,
            segment_start=d.segment.start,
            segment_end=d.segment.end,
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


def finalize_invoice(
    invoice_id: int, *, now: datetime | None = None, force: bool = False, pricer: Pricer = price_period
) -> Invoice:
    """Snapshot the lines, assign the next gapless number and open the invoice. Idempotent.

    Without ``force`` only a period that ended more than the grace period ago is finalized ("finalize now"
    in the admin passes ``force``).
    """
    now = now or timezone.now()
    try:
        with transaction.atomic():
            invoice = Invoice.objects.select_related("tenant").lock(invoice_id)
            if invoice.is_finalized:
                return invoice
            if not force and not is_due(invoice, now):
                raise ValueError(f"{invoice} is not due before {invoice.period_end} + {GRACE_PERIOD}")
            _write_lines(invoice, invoice.tenant, pricer)
            if tax_calculation.is_enabled():
                _apply_calculated_tax(invoice)
            _apply_credits(invoice, now)
            invoice.number = next_number(INVOICE_SERIES, now.year)
            invoice.status = Invoice.Status.OPEN
            invoice.finalized_at = now
            invoice.status_changed_at = now
            invoice.parties = taxes.parties(invoice.tenant)  # what the invoice says, whatever changes later
            invoice.finalization_error = ""
            invoice.save(
                update_fields=[
                    "number",
                    "status",
                    "finalized_at",
                    "status_changed_at",
                    "parties",
                    "finalization_error",
                    "stripe_tax_calculation_id",
                ]
            )
            invoice_events.record(invoice, INVOICE_FINALIZED)
            # Only versions not locked yet: the update fires the catalogue generation's statement trigger
            # (billing 0008), which would otherwise drop every process's catalogue cache at each finalization
            # and make concurrent finalizations queue on that one row.
            unlocked = PlanVersion.objects.filter(
                pk__in=invoice.scoped("lines").exclude(plan_version=None).values("plan_version"),
                is_locked=False,
            )
            if unlocked.exists():
                unlocked.update(is_locked=True)
    except tax_calculation.TaxCalculationError as error:
        # Rolled back: still a draft, and no tax is guessed. Staff see why in the admin until an attempt succeeds.
        Invoice.objects.filter(pk=invoice_id, status=Invoice.Status.DRAFT).update(
            finalization_error=f"{timezone.now():%Y-%m-%d %H:%M} UTC: {error}"[:2000]
        )
        logger.warning("invoice %s not finalized: %s", invoice_id, error)
        raise
    logger.info(
        "finalized %s for %s: %s %s", invoice.number, invoice.tenant.slug, invoice.total, invoice.currency
    )
    return invoice


def _apply_calculated_tax(invoice: Invoice) -> None:
    """Stripe Tax (billing.tax_calculation): the period's estimated tax line gives way to one carrying the tax the
    service computed for the invoice's taxable lines (with its breakdown per rate and the calculation's id), and
    the tenant's estimate rate becomes this calculation's. Nothing taxable: a zero tax line, no call."""
    profile = BillingProfile.objects.filter(tenant=invoice.tenant).first()
    request = tax_calculation.request_for(invoice, profile)
    lines = invoice.scoped("lines")
    estimate = lines.filter(kind=InvoiceLine.Kind.TAX, adjusted_period_start=None)
    position = min(estimate.values_list("position", flat=True), default=None)
    estimate.delete()
    if position is None:
        position = (lines.order_by("-position").values_list("position", flat=True).first() or 0) + 1
    quote = tax_calculation.calculate(request) if request is not None else None
    base = sum(
        (share for _, share in tax_calculation.taxable_lines(list(lines), invoice.currency)),
        Decimal(0),
    )
    tax = quote.tax if quote else Decimal(0)
    percent = (tax / base * 100).quantize(PERCENT_PLACES) if base else Decimal(0)
    portions = quote.portions if quote else ()
    InvoiceLine.objects.create(
        tenant_id=invoice.tenant_id,
        invoice=invoice,
        position=position,
        kind=InvoiceLine.Kind.TAX,
        description="Tax (Stripe Tax)"
        + (": " + ", ".join(f"{p.name} {p.percent.normalize():f} %" for p in portions) if portions else ""),
        amount=tax,
        unrounded_amount=tax,
        quantity=base,
        unit_price=percent,
        code=tax_calculation.STRIPE_TAX_CODE,
        segment_start=invoice.period_start,
        segment_end=invoice.period_end,
        price_snapshot={
            "rate": str(percent / 100),
            "base": str(base),
            "tax": str(tax),
            "inclusive": False,
            "reverse_charge": False,
            "calculation": quote.calculation_id if quote else "",
            "address": request.address if request else {},  # where Stripe taxed it: the sync tells Stripe too
            "breakdown": [
                {"name": p.name, "percent": str(p.percent), "taxable": str(p.taxable), "tax": str(p.tax)}
                for p in portions
            ],
        },
    )
    invoice.total = sum(lines.values_list("amount", flat=True), Decimal(0))
    invoice.stripe_tax_calculation_id = quote.calculation_id if quote else ""
    invoice.save(update_fields=["total"])
    if quote is not None and base:
        BillingProfile.objects.filter(pk=profile.pk).update(stripe_tax_percent=percent)


def _apply_credits(invoice: Invoice, now: datetime) -> None:
    """Prepaid credit pays the invoice up to its total, in the order of operations of billing.settlement: a
    "Prepaid credits applied" line, last, and the total (what Stripe collects) lowered by it (decision 018)."""
    lines = [settlement.Line(line.amount, (line.kind, line.meter)) for line in invoice.scoped("lines")]
    settled = settlement.settle(lines, invoice.currency, credit_available=credits.spendable(invoice, now))
    applied = credits.apply_to_invoice(invoice, now, up_to=settled.credits_applied)
    if not applied:
        return
    last = invoice.scoped("lines").order_by("-position").values_list("position", flat=True).first() or 0
    InvoiceLine.objects.create(
        tenant_id=invoice.tenant_id,
        invoice=invoice,
        position=last + 1,
        kind=InvoiceLine.Kind.CREDITS_APPLIED,
        description="Prepaid credits applied",
        amount=-applied,
        unrounded_amount=-applied,
        segment_start=invoice.period_start,
        segment_end=invoice.period_end,
    )
    invoice.total -= applied
    invoice.save(update_fields=["total"])


def next_number(series: str, year: int) -> str:
    """The next number of ``series`` in ``year`` (``ML-2026-000123``), taken under the counter row's lock: the
    caller's transaction commits it together with the document that carries it, or neither, so numbers have no
    gaps. Invoices are ``ML``, credit notes ``CN`` (billing.credit_notes)."""
    with connection.cursor() as cursor:
        # One statement (a month-end run takes a thousand numbers): the row lock is taken by the increment
        cursor.execute(
            "UPDATE billing_invoicenumbersequence SET last_number = last_number + 1 "
            "WHERE series = %s AND year = %s RETURNING last_number",
            [series, year],
        )
        row = cursor.fetchone()
    if row is None:  # the series' first number this year
        InvoiceNumberSequence.objects.get_or_create(series=series, year=year)
        return next_number(series, year)
    return f"{series}-{year}-{row[0]:06d}"


def void_invoice(invoice_id: int, *, now: datetime | None = None) -> Invoice:
    with transaction.atomic():
        invoice = Invoice.objects.lock(invoice_id)
        if invoice.status not in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
            raise ValueError(f"{invoice} is {invoice.status} and cannot be voided")
        invoice.status = Invoice.Status.VOID
        invoice.status_changed_at = now or timezone.now()
        invoice.save(update_fields=["status", "status_changed_at"])
        invoice_events.record(invoice, invoice_events.INVOICE_VOIDED)
    return invoice


def tenants_to_bill(now: datetime) -> list[tuple[int, date]]:
    """(tenant, period) pairs whose draft should exist and be current: this period and, until it is
    finalized, the previous one."""
    billable = Tenant.objects.filter(status=Tenant.Status.ACTIVE, subscriptions__isnull=False).distinct()
    return [(tenant.pk, start) for tenant in billable for start in periods_to_bill(tenant, now)]


def periods_to_bill(tenant: Tenant, now: datetime) -> list[date]:
    """The periods the beat keeps a draft of now: this one and, until it is finalized, the previous one."""
    start, _ = current_period(tenant, now)
    previous = periods.previous_month(start)
    if (
        not Invoice.objects.for_tenant(tenant).finalized().filter(period_start=previous).exists()
        and Subscription.objects.for_tenant(tenant).filter(starts_on__lt=start).exists()
    ):
        return [start, previous]
    return [start]


def refresh_drafts_for(tenant_id: int, now: datetime | None = None) -> list[Invoice]:
    """Bring the tenant's drafts up to date now, after a change to its subscriptions or to a plan it is on,
    so the draft says what the dashboard says without waiting for the beat refresh: every draft it has,
    and those the beat would create (a tenant that just got its first subscription). Idempotent."""
    tenant = Tenant.objects.get(pk=tenant_id)
    starts = set(
        Invoice.objects.for_tenant(tenant)
        .filter(status=Invoice.Status.DRAFT)
        .values_list("period_start", flat=True)
    )
    if tenant.status == Tenant.Status.ACTIVE and tenant.subscriptions.exists():
        starts.update(periods_to_bill(tenant, now or timezone.now()))
    return [generate_invoice(tenant_id, start) for start in sorted(starts)]


def tenants_on_plan(plan_id: int) -> list[int]:
    """The tenants any of whose subscriptions (past, current or future) is to the plan: the drafts a change
    of the plan may move."""
    return list(
        Subscription.objects.filter(plan_id=plan_id)
        .order_by("tenant_id")
        .values_list("tenant_id", flat=True)
        .distinct()
    )


def due_invoice_ids(now: datetime) -> list[int]:
    return [invoice.pk for invoice in due_drafts(now)]


def due_drafts(now: datetime) -> list[Invoice]:
    """The drafts whose period ended more than the grace period ago (in the tenant's time zone)."""
    drafts = Invoice.objects.filter(
        status=Invoice.Status.DRAFT, period_end__lte=(now - GRACE_PERIOD).date() + timedelta(days=1)
    )
    return [invoice for invoice in drafts.select_related("tenant") if is_due(invoice, now)]
