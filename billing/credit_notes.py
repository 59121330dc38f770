"""Credit notes on finalized invoices (DESIGN §14, issue 16 part 1, decision 020): issuing one, and what an
invoice has left to credit and to pay.

:func:`issue` checks everything, then, in one transaction under the invoice's row lock: works out the amounts
(billing.credit_note_amounts), takes the next number of the ``CN`` series (gapless, like invoices'), stores the
note and its lines, applies the outcome and records ``credit_note.created`` in the outbox — all or nothing.
Outcomes, as Stripe's credit notes work (a note lowers what is still due first, and only what was paid can be
refunded or credited):

* ``reduce_due``: the invoice is open (or uncollectible) and the note is at most what is still due; a note that
  brings what is due to zero marks the invoice paid, as Stripe does with its copy.
* ``refund``: the invoice is paid; payments refunds it through Stripe (``refund_amount``) once the note syncs.
* ``credit_balance``: the invoice is paid; a ``refund`` grant of the prepaid ledger (billing.credits), made in
  the same transaction and at most once (``CreditGrant.credit_note`` is unique).

Issuing is the seller's act: platform staff issue notes in the admin; tenants see them (decision 020).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing import credits, discounts, invoice_events, invoicing
from billing.credit_note_amounts import (
    Allocation,
    Billed,
    Credited,
    CreditNoteError,
    NoteFigures,
    Request,
    allocate,
    figure,
    full,
)
from billing.models import Coupon, CreditGrant, CreditNote, CreditNoteLine, Invoice, InvoiceLine
from billing.money import plain_decimal
from billing.pricing import round_money
from notifications import outbox

__all__ = [
    "CreditNoteError",
    "Request",
    "amount_due",
    "creditable_lines",
    "credited",
    "issue",
    "left_to_credit",
]

CREDIT_NOTE_CREATED = "credit_note.created"
CREDIT_NOTE_SERIES = "CN"
MEMO_MAX_CHARS = 500
Outcome, Status = CreditNote.Outcome, Invoice.Status
UNPAID = (Status.OPEN, Status.UNCOLLECTIBLE)
# Which invoice statuses each outcome applies to.
OUTCOME_STATUSES = {
    Outcome.REDUCE_DUE: UNPAID,
    Outcome.REFUND: (Status.PAID,),
    Outcome.CREDIT_BALANCE: (Status.PAID,),
}


def issue(
    invoice_id: int,
    *,
    outcome: str,
    reason: str,
    memo: str = "",
    lines: Sequence[Request] | None = None,
    by=None,
    now: datetime | None = None,
    request_key: str = "",
) -> CreditNote:
    """Issue a credit note on ``invoice_id``: of ``lines`` (amounts or quantities of its lines), or, with
    ``lines=None``, of everything left to credit on it. Raises CreditNoteError naming the field at fault, and
    then nothing has changed. ``request_key`` (the admin form's, one per rendered form): a request made again
    with it returns the note it issued (a double submit issues once; the database holds one per invoice)."""
    memo = _check_terms(outcome, reason, memo)
    now = now or timezone.now()
    with transaction.atomic():
        try:
            invoice = Invoice.objects.select_related("tenant").lock(invoice_id, of=("self",))
        except Invoice.DoesNotExist:
            raise CreditNoteError("invoice", f"there is no invoice {invoice_id}") from None
        if request_key and (done := invoice.credit_notes.filter(request_key=request_key).first()):
            return done  # read under the invoice's lock: a concurrent submit's note has committed by now
        _check_invoice(invoice, outcome)
        allocation, credited = allocation_of(invoice), credited_on(invoice)
        figures = figure(allocation, credited, full(allocation, credited) if lines is None else lines)
        due = amount_due(invoice)
        if outcome == Outcome.REDUCE_DUE and figures.total > due:
            raise CreditNoteError(
                "outcome", f"only {due} {invoice.currency} is still due: this note credits {figures.total}"
            )
        note = _store(invoice, figures, outcome, reason, memo, by, now, request_key)
        if outcome == Outcome.CREDIT_BALANCE:
            credits.grant(
                invoice.tenant,
                note.total,
                source=CreditGrant.Source.REFUND,
                reason=f"Credit note {note.number} on invoice {invoice.number}: {note.get_reason_display()}"
                + (f" — {memo}" if memo else ""),
                by=by,
                credit_note=note,
            )
        if outcome == Outcome.REDUCE_DUE and figures.total == due:
            # nothing left to pay: paid, as Stripe marks its copy once the note brings amount_remaining to 0
            Invoice.objects.filter(tenant_id=invoice.tenant_id, pk=invoice.pk).update(
                status=Status.PAID, status_changed_at=now
            )
            invoice.status, invoice.status_changed_at = Status.PAID, now
            invoice_events.record(invoice, invoice_events.INVOICE_PAID)
        outbox.record(invoice.tenant_id, CREDIT_NOTE_CREATED, credit_note_data(note))
    return note


def _check_terms(outcome: str, reason: str, memo: str) -> str:
    if outcome not in Outcome.values:
        raise CreditNoteError("outcome", f"must be one of {', '.join(Outcome.values)}")
    if reason not in CreditNote.Reason.values:
        raise CreditNoteError("reason", f"must be one of {', '.join(CreditNote.Reason.values)}")
    memo = (memo or "").strip()
    if reason == CreditNote.Reason.OTHER and not memo:
        raise CreditNoteError("memo", "say why in the memo when the reason is other")
    if len(memo) > MEMO_MAX_CHARS:
        raise CreditNoteError("memo", f"at most {MEMO_MAX_CHARS} characters")
    return memo


def _check_invoice(invoice: Invoice, outcome: str) -> None:
    if invoice.status == Status.DRAFT:
        raise CreditNoteError("invoice", f"{invoice} is a draft: credit notes are for finalized invoices")
    if invoice.status == Status.VOID:
        raise CreditNoteError("invoice", f"{invoice} is void: it bills nothing to credit")
    if invoice.total <= 0:
        total = round_money(invoice.total, invoice.currency)
        raise CreditNoteError("invoice", f"{invoice} totals {total} {invoice.currency}: nothing to credit")
    if invoice.status not in OUTCOME_STATUSES[outcome]:
        if invoice.status == Status.PAID:
            hint = "it is paid: refund it or credit the prepaid balance"
        else:
            hint = (
                f"it is {invoice.status}: a credit note lowers what is still due first (reduce what is due)"
            )
        raise CreditNoteError("outcome", f"cannot {Outcome(outcome).label} on {invoice}: {hint}")
    if outcome == Outcome.CREDIT_BALANCE and invoice.tenant.currency != invoice.currency:
        raise CreditNoteError(
            "outcome",
            f"the tenant's prepaid balance is in {invoice.tenant.currency}, the invoice in {invoice.currency}",
        )


def allocation_of(invoice: Invoice) -> Allocation:
    """The invoice's creditable lines and their shares of its discounts, tax and deductions."""
    stored = list(invoice.scoped("lines").order_by("position"))
    codes = {line.code for line in stored if line.kind == InvoiceLine.Kind.DISCOUNT}
    coverage = {}
    for coupon in Coupon.objects.filter(code__in=codes):
        made = discounts.as_discount(coupon, invoice.currency)
        coverage[coupon.code] = made.applies_to if made is not None else None
    tax, included = Decimal(0), False
    for line in stored:
        if line.kind != InvoiceLine.Kind.TAX:
            continue
        snapshot = line.price_snapshot or {}
        if snapshot.get("inclusive"):
            tax, included = tax + Decimal(snapshot.get("tax", "0")), True
        else:
            tax += line.amount  # exclusive: added; reverse-charged: 0
    billed = [
        Billed(
            id=line.pk,
            kind=line.kind,
            amount=round_money(line.amount, invoice.currency),  # stored with 4 places: in its minor unit
            description=line.description,
            group=(line.kind, line.meter, line.provider, line.model),
            code=line.code,
            billable_quantity=line.billable_quantity,
        )
        for line in stored
    ]
    currency = invoice.currency
    return allocate(
        billed,
        round_money(invoice.total, currency),
        currency,
        tax=round_money(tax, currency),
        tax_included=included,
        coverage=coverage,
    )


def credited_on(invoice: Invoice) -> Credited:
    """What the invoice's credit notes took so far (read under the invoice's lock by :func:`issue`)."""
    amounts: dict[int, Decimal] = {}
    quantities: dict[int, Decimal] = {}
    rows = CreditNoteLine.objects.filter(
        tenant_id=invoice.tenant_id, credit_note__tenant_id=invoice.tenant_id, credit_note__invoice=invoice
    ).values_list("invoice_line_id", "amount", "quantity")
    zero = round_money(Decimal(0), invoice.currency)
    for line_id, amount, quantity in rows:
        amounts[line_id] = round_money(amounts.get(line_id, zero) + amount, invoice.currency)
        if quantity is not None:
            quantities[line_id] = quantities.get(line_id, Decimal(0)) + quantity
    sums = _notes_on(invoice).aggregate(
        discount=Sum("discount_amount"),
        tax=Sum("tax_amount"),
        deduction=Sum("deduction_amount"),
        total=Sum("total"),
    )
    return Credited(
        amounts, quantities, **{k: round_money(v or zero, invoice.currency) for k, v in sums.items()}
    )


def _store(
    invoice: Invoice,
    figures: NoteFigures,
    outcome: str,
    reason: str,
    memo: str,
    by,
    now: datetime,
    request_key: str,
) -> CreditNote:
    note = CreditNote.objects.create(
        tenant_id=invoice.tenant_id,
        invoice=invoice,
        number=invoicing.next_number(CREDIT_NOTE_SERIES, now.year),
        reason=reason,
        memo=memo,
        outcome=outcome,
        currency=invoice.currency,
        subtotal=figures.subtotal,
        discount_amount=figures.discount,
        tax_amount=figures.tax,
        tax_included=figures.tax_included,
        deduction_amount=figures.deduction,
        total=figures.total,
        issued_by=by,
        issued_at=now,
        request_key=request_key,
    )
    CreditNoteLine.objects.bulk_create(
        CreditNoteLine(
            tenant_id=note.tenant_id,
            credit_note=note,
            invoice_line_id=line.share.line.id,
            position=position,
            description=line.share.line.description[:300],
            quantity=line.quantity,
            amount=line.amount,
            tax_amount=line.tax,
            total=line.total,
        )
        for position, line in enumerate(figures.lines, start=1)
    )
    return note


def _notes_on(invoice: Invoice):
    """The invoice's credit notes, named with its tenant so a sharded database reads one tenant's (decision 024)."""
    return invoice.credit_notes.filter(tenant_id=invoice.tenant_id)


def credited(invoice: Invoice) -> Decimal:
    """What the invoice's credit notes credited, together."""
    return round_money(_notes_on(invoice).aggregate(s=Sum("total"))["s"] or Decimal(0), invoice.currency)


def left_to_credit(invoice: Invoice) -> Decimal:
    """What credit notes can still take from the invoice: its total less the notes issued on it."""
    if invoice.status in (Status.DRAFT, Status.VOID) or invoice.total <= 0:
        return round_money(Decimal(0), invoice.currency)
    return round_money(invoice.total - credited(invoice), invoice.currency)


def amount_due(invoice: Invoice) -> Decimal:
    """What the tenant still has to pay on the invoice: an open or uncollectible one's total less its credit
    notes (all of which reduced what was due); nothing on a draft, or a paid or void invoice."""
    if invoice.status not in UNPAID:
        return round_money(Decimal(0), invoice.currency)
    reduced = _notes_on(invoice).filter(outcome=Outcome.REDUCE_DUE).aggregate(s=Sum("total"))["s"] or 0
    return round_money(invoice.total - reduced, invoice.currency)


def credit_note_data(note: CreditNote) -> dict[str, Any]:
    """``credit_note.created``'s data (version 1, docs/webhooks.md): ids, dates and decimal strings."""
    invoice, currency = note.invoice, note.currency

    def money(amount: Decimal) -> str:
        return str(round_money(amount, currency))

    return {
        "credit_note_id": note.pk,
        "number": note.number,
        "invoice_id": invoice.pk,
        "invoice_number": invoice.number,
        "reason": note.reason,
        "memo": note.memo,
        "outcome": note.outcome,
        "currency": currency,
        "subtotal": money(note.subtotal),
        "discount": money(note.discount_amount),
        "tax": money(note.tax_amount),
        "tax_included": note.tax_included,
        "deduction": money(note.deduction_amount),
        "total": money(note.total),
        "invoice_status": invoice.status,
        "invoice_amount_due": money(amount_due(invoice)),
        "issued_at": note.issued_at.isoformat(),
        "lines": [
            {
                "invoice_line_id": line.invoice_line_id,
                "description": line.description,
                "quantity": None if line.quantity is None else plain_decimal(line.quantity),
                "amount": money(line.amount),
                "total": money(line.total),
            }
            for line in note.scoped("lines").order_by("position")
        ],
    }


@dataclass(frozen=True)
class Creditable:
    """A line credit notes can still take from (the admin's form): what is left of it and how it was credited
    so far (``by_quantity``: True by quantity, False by amount, None not yet)."""

    line: InvoiceLine
    credited: Decimal
    left: Decimal
    by_quantity: bool | None
    quantity_left: Decimal | None


def creditable_lines(invoice: Invoice) -> list[Creditable]:
    allocation, credited = allocation_of(invoice), credited_on(invoice)
    lines = {line.pk: line for line in invoice.scoped("lines").filter(pk__in=list(allocation.shares))}
    rows = []
    for line_id, share in allocation.shares.items():
        by_quantity = None
        if line_id in credited.quantities:
            by_quantity = True
        elif line_id in credited.amounts:
            by_quantity = False
        quantity_left = None
        if share.line.billable_quantity > 0 and by_quantity is not False:
            quantity_left = share.line.billable_quantity - credited.quantities.get(line_id, Decimal(0))
        rows.append(
            Creditable(
                lines[line_id],
                credited.amounts.get(line_id, round_money(Decimal(0), invoice.currency)),
                credited.left(share),
                by_quantity,
                quantity_left,
            )
        )
    return rows
