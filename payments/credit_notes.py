"""Credit notes to Stripe (DESIGN §7 and §14, decision 020): each credit note issued on an invoice Stripe has a
copy of becomes a Stripe credit note on that copy, exactly once.

Push (:func:`sync_credit_note`, queued after ``credit_note.created`` commits, after the invoice's own sync, and
by the reconcile beat): one ``POST /v1/credit_notes`` with an idempotency key from the note's id and our ids in
its metadata; before it, the note is looked for among the Stripe invoice's credit notes (a consistent list), so
a rerun after a lost answer or a killed worker finds it instead of crediting twice. Its lines are custom lines,
one per line of ours carrying what it credits (its share of discount, tax and deductions included: the Stripe
invoice holds our discounts and tax as items of its own), so Stripe's total equals ours to the minor unit. How
the credit is made follows the outcome, as Stripe applies a note: ``reduce_due`` lowers what the open invoice
has left to pay (pre-payment); ``refund`` is a ``refund_amount`` (a refund of the card payment); and
``credit_balance`` is an ``out_of_band_amount`` — the credit is in our prepaid ledger, not in the Stripe
customer's balance, which would apply it to the next Stripe invoice a second time.

Before creating it, Stripe's invoice must be the copy of ours (customer, currency, total) and able to take the
note as the outcome says (enough left to pay, or paid); otherwise the sync fails with both figures for a person.
A ``credit_note.created`` webhook of ours records Stripe's id if the answer was lost.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import stripe
from django.db.models import Q
from django.utils import timezone

from billing.models import CreditNote, Invoice
from billing.pricing import to_minor_units
from payments.stripe_sync import (
    HELD_FOR_REVIEW,
    SyncMismatch,
    attempt,
    client,
    is_configured,
    is_ours,
    key_options,
    namespace,
    our_metadata,
    plain,
)

logger = logging.getLogger(__name__)

SyncState, Outcome = CreditNote.SyncState, CreditNote.Outcome
UNSYNCED_GRACE = timedelta(minutes=5)  # the on-commit task normally gets there first
STALE_PENDING = timedelta(minutes=30)
# Our reasons that Stripe has too (``other`` has none: the memo says it).
STRIPE_REASONS = {"duplicate", "fraudulent", "order_change", "product_unsatisfactory"}
WAITING_FOR_INVOICE = "waiting for its invoice to reach Stripe"


def sync_credit_note(note_id: int) -> str:
    """Push one credit note to Stripe; safe to run again at any point. Returns its sync state.

    A note whose invoice never reached Stripe (settled here before it was sent) needs nothing there; one whose
    invoice is not synced yet waits (pending) for the invoice's sync, which queues it. Transient Stripe errors
    are recorded and re-raised for the Celery task to retry; refusals and mismatches mark the sync failed."""
    note = CreditNote.objects.select_related("invoice", "tenant").get(pk=note_id)
    if not is_configured() or note.sync_state in (SyncState.SYNCED, SyncState.NOT_NEEDED):
        return note.sync_state
    invoice = note.invoice
    if not invoice.stripe_invoice_id and invoice.status != Invoice.Status.OPEN:
        _record(note_id, sync_state=SyncState.NOT_NEEDED, sync_error="")
        return SyncState.NOT_NEEDED
    now = timezone.now()
    if invoice.sync_state != Invoice.SyncState.SYNCED:
        _record(note_id, sync_state=SyncState.PENDING, sync_attempted_at=now, sync_error=WAITING_FOR_INVOICE)
        return SyncState.PENDING
    _record(note_id, sync_state=SyncState.PENDING, sync_attempted_at=now)
    stripe_note = attempt(
        lambda: _push(client(), note),
        lambda **fields: _record(note_id, **fields),
        f"credit note {note.number}",
    )
    if stripe_note is None:
        return SyncState.FAILED
    _synced(note_id, stripe_note.id, [plain(r) for r in stripe_note.refunds or []])
    logger.info("synced credit note %s to Stripe %s", note.number, stripe_note.id)
    return SyncState.SYNCED


def _push(api: stripe.StripeClient, note: CreditNote) -> stripe.CreditNote:
    expected = to_minor_units(note.total, note.currency)
    found = _find(api, note)
    if found is None:
        _check_invoice(note, api.v1.invoices.retrieve(note.invoice.stripe_invoice_id))
        found = api.v1.credit_notes.create(_params(note), key_options("credit-note", note.pk))
    if found.total != expected:
        raise SyncMismatch(
            f"Stripe credit note {found.id} totals {found.total} minor units of {note.currency}, ours {expected}"
        )
    return found


def _find(api: stripe.StripeClient, note: CreditNote) -> stripe.CreditNote | None:
    """The Stripe credit note an earlier run made: by the stored id, else by our metadata among the invoice's
    credit notes (a list, which sees a note the moment it exists)."""
    if note.stripe_credit_note_id:
        return api.v1.credit_notes.retrieve(note.stripe_credit_note_id)
    listed = api.v1.credit_notes.list({"invoice": note.invoice.stripe_invoice_id, "limit": 100})
    for candidate in listed.auto_paging_iter():
        if is_ours(candidate.metadata, "credit_note_id", note.pk):
            return candidate
    return None


def _check_invoice(note: CreditNote, stripe_invoice: stripe.Invoice) -> None:
    """Stripe's invoice is the copy of ours and can take the note as its outcome says: Stripe applies a note to
    what is left to pay first, so a note that reduces what is due needs that much left, and a refund or a credit
    needs the invoice paid (nothing left to pay)."""
    invoice, currency = note.invoice, note.currency
    if (
        stripe_invoice.customer != note.tenant.stripe_customer_id
        or stripe_invoice.currency != currency.lower()
    ):
        raise SyncMismatch(f"Stripe invoice {stripe_invoice.id} is not the tenant's copy in {currency}")
    if stripe_invoice.total != to_minor_units(invoice.total, currency):
        raise SyncMismatch(
            f"Stripe invoice {stripe_invoice.id} totals {stripe_invoice.total}, ours "
            f"{to_minor_units(invoice.total, currency)}"
        )
    total, remaining = to_minor_units(note.total, currency), stripe_invoice.amount_remaining
    if note.outcome == Outcome.REDUCE_DUE and (stripe_invoice.status == "paid" or remaining < total):
        raise SyncMismatch(
            f"Stripe invoice {stripe_invoice.id} is {stripe_invoice.status} with {remaining} left to pay: it "
            f"cannot lower what is due by {total}; it was paid meanwhile — refund or credit the payment instead"
        )
    if note.outcome != Outcome.REDUCE_DUE and remaining:
        raise SyncMismatch(
            f"Stripe invoice {stripe_invoice.id} is {stripe_invoice.status} with {remaining} left to pay: a "
            f"{note.get_outcome_display()} note needs it paid"
        )


def _params(note: CreditNote) -> dict[str, Any]:
    currency, invoice = note.currency, note.invoice
    params: dict[str, Any] = {
        "invoice": invoice.stripe_invoice_id,
        "lines": [
            {
                "type": "custom_line_item",
                "description": line.description,
                "quantity": 1,
                "unit_amount": to_minor_units(line.total, currency),
            }
            for line in note.scoped("lines").order_by("position")
            if line.total > 0
        ],
        "memo": f"Meterline credit note {note.number}: {note.get_reason_display()}"
        + (f" — {note.memo}" if note.memo else ""),
        "metadata": our_metadata(
            credit_note_id=note.pk,
            credit_note_number=note.number,
            invoice_id=invoice.pk,
            tenant_id=note.tenant_id,
        ),
    }
    if note.reason in STRIPE_REASONS:
        params["reason"] = note.reason
    if note.outcome == Outcome.REFUND:
        params["refund_amount"] = to_minor_units(note.total, currency)
    elif note.outcome == Outcome.CREDIT_BALANCE:
        params["out_of_band_amount"] = to_minor_units(note.total, currency)
    return params


def _synced(note_id: int, stripe_id: str, refunds: Any) -> None:
    """Record Stripe's note (and the refund it made, if any) on ours."""
    refund = next(
        (r.get("refund") for r in plain(refunds) or [] if isinstance(r, dict) and r.get("refund")), ""
    )
    if isinstance(refund, dict):  # expanded
        refund = refund.get("id", "")
    _record(
        note_id,
        sync_state=SyncState.SYNCED,
        sync_error="",
        synced_at=timezone.now(),
        stripe_credit_note_id=stripe_id,
        stripe_refund_id=str(refund or "")[:255],
    )


def _record(note_id: int, **fields: Any) -> None:
    """Write sync columns only (the trigger lets only these change on an issued note)."""
    CreditNote.objects.filter(pk=note_id).update(**fields)


def handle_event(event: dict[str, Any]) -> tuple[str, Invoice | None]:
    """A ``credit_note.created`` webhook: if it is one of ours, a copy of it (the invoice's Stripe copy, the
    tenant's customer, our total), Stripe's id is recorded (the push's answer may have been lost); one that only
    names ours is held for review; others are ignored."""
    data = event.get("data")
    stripe_note = data.get("object") if isinstance(data, dict) else None
    if not isinstance(stripe_note, dict):
        return "ignored: no credit note in the event", None
    note = _our_note(stripe_note)
    if note is None:
        return "ignored: not one of our credit notes", None
    expected = to_minor_units(note.total, note.currency)
    if (
        stripe_note.get("invoice") != note.invoice.stripe_invoice_id
        or not note.tenant.stripe_customer_id
        or stripe_note.get("customer") != note.tenant.stripe_customer_id
        or stripe_note.get("total") != expected
    ):
        logger.warning(
            "Stripe credit note %s names %s but is not its copy", stripe_note.get("id"), note.number
        )
        return (
            f"{HELD_FOR_REVIEW}: credit note {note.number} has another invoice, customer or total",
            note.invoice,
        )
    if note.sync_state == SyncState.SYNCED:
        return f"credit note {note.number}: already synced", note.invoice
    if note.stripe_credit_note_id not in ("", stripe_note.get("id")):
        return (
            f"{HELD_FOR_REVIEW}: credit note {note.number} is {note.stripe_credit_note_id} on Stripe",
            note.invoice,
        )
    _synced(note.pk, str(stripe_note.get("id")), stripe_note.get("refunds"))
    return f"credit note {note.number}: synced", note.invoice


def _our_note(stripe_note: dict[str, Any]) -> CreditNote | None:
    metadata = stripe_note.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("meterline_namespace") != namespace():
        return None
    our_id = metadata.get("meterline_credit_note_id")
    if not (isinstance(our_id, str) and our_id.isdigit()):
        return None
    return CreditNote.objects.select_related("invoice", "tenant").filter(pk=int(our_id)).first()


def credit_notes_to_sync(now: datetime, limit: int = 500) -> list[int]:
    """Notes the beat should push: never queued (issued while Stripe was not configured, or the task was lost)
    and stuck or waiting pending ones. Failed syncs wait for a person ('retry sync' in the admin)."""
    stuck = Q(sync_state=SyncState.PENDING) & (
        Q(sync_attempted_at__lte=now - STALE_PENDING) | Q(sync_attempted_at__isnull=True)
    )
    waiting = Q(sync_state=SyncState.PENDING, sync_error=WAITING_FOR_INVOICE)
    never = Q(sync_state=SyncState.NOT_SYNCED, issued_at__lte=now - UNSYNCED_GRACE)
    candidates = CreditNote.objects.filter(never | stuck | waiting)
    return list(candidates.order_by("issued_at", "pk").values_list("pk", flat=True)[:limit])


def unsynced_of(invoice_id: int) -> list[int]:
    """The invoice's notes not on Stripe yet: queued once the invoice itself is synced."""
    return list(
        CreditNote.objects.filter(invoice_id=invoice_id)
        .exclude(sync_state__in=[SyncState.SYNCED, SyncState.NOT_NEEDED, SyncState.FAILED])
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def mark_for_retry(note_ids) -> list[int]:
    """The admin's 'retry sync': of these notes, those not synced (nor needing it), set back to pending."""
    if not is_configured():
        return []
    ids = list(
        CreditNote.objects.filter(pk__in=list(note_ids))
        .exclude(sync_state__in=[SyncState.SYNCED, SyncState.NOT_NEEDED])
        .values_list("pk", flat=True)
    )
    CreditNote.objects.filter(pk__in=ids).update(
        sync_state=SyncState.PENDING, sync_attempted_at=timezone.now()
    )
    return ids
