"""Late usage: events that arrive for a period already finalized are billed on the next invoice (DESIGN §6), and
so are corrections of its events (DESIGN §14, decision 021): a retraction lowers the period's rollups, so the
period re-priced comes out lower and the next invoice carries a negative adjustment.

Events are accepted up to 35 days late, and corrected up to 35 days after their time, so only the two periods
before the current one can still change after they were finalized (:data:`LATE_USAGE_PERIODS`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from decimal import Decimal

from django.db.models import Q

from billing import tax_calculation
from billing.models import Invoice, InvoiceLine
from billing.period_pricing import LineDraft, Segment, price_period

LATE_USAGE_PERIODS = 2


def adjustment_lines(invoice: Invoice, pricer=price_period) -> list[LineDraft]:
    """Late usage of recent finalized periods, as adjustment lines for ``invoice`` (a draft, or an unsaved
    Invoice of the tenant and period when spend control prices what the next invoice will carry).

    Each earlier period is re-priced with the usage that exists now, under the plan versions it was billed
    with, and compared per group with what was already billed for it (its own lines plus adjustments on
    other finalized invoices). The difference becomes a line labelled with the original period, so the
    finalized invoice never changes and nothing is billed twice. ``pricer`` prices a period
    (billing.invoicing's; :func:`price_period` by default).
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
        now_priced = pricer(invoice.tenant, past.period_start, past.period_end)
        # Under Stripe Tax the invoice that carries the adjustments has them taxed by Stripe with its other lines
        # (billing.tax_calculation): an earlier period's tax is never adjusted as well, which would tax them twice.
        taxed_by_service = tax_calculation.is_enabled() or bool(past.stripe_tax_calculation_id)
        billed: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0)])
        billed_lines = (
            InvoiceLine.objects.filter(tenant_id=invoice.tenant_id, invoice__tenant_id=invoice.tenant_id)
            .filter(Q(invoice=past, adjusted_period_start=None) | Q(adjusted_period_start=past.period_start))
            .exclude(invoice_id=invoice.pk)  # none when ``invoice`` is not saved (the balance asking)
            .exclude(invoice__status__in=[Invoice.Status.DRAFT, Invoice.Status.VOID])
            # prepaid credit paid the invoice; it priced nothing, so re-pricing never "credits it back"
            .exclude(kind=InvoiceLine.Kind.CREDITS_APPLIED)
            .select_related("plan_version")
            .order_by("-invoice__period_start", "position")  # the latest billing of a group is its example
        )
        if taxed_by_service:
            billed_lines = billed_lines.exclude(kind=InvoiceLine.Kind.TAX).exclude(
                adjusts_kind=InvoiceLine.Kind.TAX
            )
        examples: dict[tuple, InvoiceLine] = {}
        for line in billed_lines:
            key = (
                line.adjusts_kind or line.kind,
                line.meter,
                line.provider,
                line.model,
                line.segment_start,
                line.code,
            )
            billed[key][0] += line.amount
            billed[key][1] += line.quantity
            billed[key][2] += line.platform_cost or 0
            examples.setdefault(key, line)
        for line in now_priced.lines:
            if taxed_by_service and line.kind == InvoiceLine.Kind.TAX:
                continue
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
                code=example.code,
                unit_price=example.unit_price,
                unit_size=example.unit_size,
            )
            lines.append(_adjustment(gone, past, -amount, -quantity, -cost, -amount))
    return lines


def _adjustment(line: LineDraft, past: Invoice, amount, quantity, cost, unrounded) -> LineDraft:
    # Less than was billed can only come from corrections (late usage only adds).
    why = "Usage corrected" if quantity < 0 else "Late usage"
    return dataclasses.replace(
        line,
        kind=InvoiceLine.Kind.ADJUSTMENT,
        adjusts_kind=line.kind,
        description=f"{why} for {past.period_start:%B %Y}: {line.description}",
        amount=amount,
        unrounded_amount=unrounded,
        quantity=quantity,
        allowance=Decimal(0),
        billable_quantity=quantity,
        platform_cost=cost,
        adjusted_period_start=past.period_start,
    )
