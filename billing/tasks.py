"""Celery tasks of billing: thin, idempotent wrappers around billing.invoicing and billing.stripe_sync, called
with ids."""

from datetime import date

from celery import shared_task
from django.utils import timezone

from billing import invoicing, stripe_sync


@shared_task(acks_late=True)
def generate_invoice(tenant_id: int, period_start: str) -> int:
    return invoicing.generate_invoice(tenant_id, date.fromisoformat(period_start)).pk


@shared_task(acks_late=True)
def finalize_invoice(invoice_id: int) -> str | None:
    invoice = invoicing.finalize_invoice(invoice_id)
    return invoice.number


@shared_task(acks_late=True)
def refresh_drafts() -> int:
    """Beat: keep every billable tenant's current (and not yet finalized previous) draft up to date."""
    pairs = invoicing.tenants_to_bill(timezone.now())
    for tenant_id, period_start in pairs:
        generate_invoice.delay(tenant_id, period_start.isoformat())
    return len(pairs)


@shared_task(acks_late=True)
def finalize_due_invoices() -> int:
    """Beat: finalize drafts whose period ended more than the grace period ago."""
    ids = invoicing.due_invoice_ids(timezone.now())
    for invoice_id in ids:
        finalize_invoice.delay(invoice_id)
    return len(ids)


@shared_task(
    acks_late=True,
    autoretry_for=stripe_sync.TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=10,
)
def sync_invoice_to_stripe(invoice_id: int) -> str:
    """Push a finalized invoice to Stripe. Connection errors, rate limits and 5xx retry with exponential
    backoff (1 s, 2 s, … up to 10 min, jittered; about 17 min in all); after that the invoice stays pending
    and the reconcile beat queues it again. Other errors mark the sync failed (see stripe_sync.sync_invoice)."""
    return stripe_sync.sync_invoice(invoice_id)


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
