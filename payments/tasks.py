"""Celery tasks of payments: thin, idempotent wrappers around payments.stripe_sync, payments.topups and
payments.credit_notes, called with ids."""

from celery import shared_task
from django.utils import timezone

from billing.models import Invoice
from notifications.models import Event
from payments import credit_notes, stripe_sync, topups

# A sync to Stripe: connection errors, rate limits and 5xx retry with exponential, jittered backoff (1 s, 2 s, …
# up to 10 min; about 17 min in all), then the reconcile beat takes it up again.
STRIPE_SYNC_RETRIES = {
    "acks_late": True,
    "autoretry_for": stripe_sync.TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(**STRIPE_SYNC_RETRIES)
def sync_invoice_to_stripe(invoice_id: int) -> str:
    """Push a finalized invoice to Stripe. Connection errors, rate limits and 5xx retry with exponential
    backoff (1 s, 2 s, … up to 10 min, jittered; about 17 min in all); after that the invoice stays pending
    and the reconcile beat queues it again. Other errors mark the sync failed (see stripe_sync.sync_invoice).
    Once the invoice is on Stripe, its credit notes issued before that follow."""
    state = stripe_sync.sync_invoice(invoice_id)
    if state == Invoice.SyncState.SYNCED:
        for note_id in credit_notes.unsynced_of(invoice_id):
            sync_credit_note_to_stripe.delay(note_id)
    return state


@shared_task(acks_late=True)
def reconcile_stripe() -> dict[str, int]:
    """Beat: queue open invoices that never reached Stripe, and apply Stripe status changes whose webhook we
    missed."""
    if not stripe_sync.is_configured():
        return {"queued": 0, "moved": 0}
    ids = stripe_sync.invoices_to_sync(timezone.now())
    for invoice_id in ids:
        sync_invoice_to_stripe.delay(invoice_id)
    return {"queued": len(ids), "moved": stripe_sync.refresh_statuses()}


def queue_invoice_sync(event: Event) -> None:
    """Outbox subscriber for ``invoice.finalized``: push the invoice to Stripe (nothing while Stripe is not
    configured; the reconcile beat catches up once it is)."""
    if stripe_sync.is_configured():
        sync_invoice_to_stripe.delay(event.data["invoice_id"])


@shared_task(
    acks_late=True,
    autoretry_for=stripe_sync.TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def push_topup(topup_id: int) -> str:
    """Take a top-up to Stripe and charge it (payments.topups.push_topup); transient errors retry with backoff,
    then the reconcile beat takes it up again."""
    return topups.push_topup(topup_id)


@shared_task(acks_late=True)
def reconcile_topups() -> dict[str, int]:
    """Beat: push top-ups the on-commit task did not finish, and read the Stripe status of those awaiting
    payment (a missed webhook). An error on one does not stop the others."""
    if not stripe_sync.is_configured():
        return {"checked": 0, "errors": 0}
    checked = errors = 0
    for topup_id in topups.topups_to_reconcile():
        try:
            topups.refresh_topup(topup_id)
            checked += 1
        except stripe_sync.TRANSIENT_ERRORS:
            errors += 1
    return {"checked": checked, "errors": errors}


def queue_topup(event: Event) -> None:
    """Outbox subscriber for ``topup.requested``: take it to Stripe (the reconcile beat catches up if Stripe is
    configured later or this is lost)."""
    if stripe_sync.is_configured():
        push_topup.delay(event.data["topup_id"])


@shared_task(**STRIPE_SYNC_RETRIES)
def sync_credit_note_to_stripe(note_id: int) -> str:
    """Push a credit note to Stripe (payments.credit_notes.sync_credit_note), retried like an invoice's sync."""
    return credit_notes.sync_credit_note(note_id)


@shared_task(acks_late=True)
def reconcile_credit_notes() -> dict[str, int]:
    """Beat: queue the credit notes that never reached Stripe (a lost task, Stripe configured later, an invoice
    synced since)."""
    if not stripe_sync.is_configured():
        return {"queued": 0}
    ids = credit_notes.credit_notes_to_sync(timezone.now())
    for note_id in ids:
        sync_credit_note_to_stripe.delay(note_id)
    return {"queued": len(ids)}


def queue_credit_note_sync(event: Event) -> None:
    """Outbox subscriber for ``credit_note.created``: push the note to Stripe (the reconcile beat catches up if
    Stripe is configured later or this is lost)."""
    if stripe_sync.is_configured():
        sync_credit_note_to_stripe.delay(event.data["credit_note_id"])
