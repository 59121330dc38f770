"""Celery tasks of billing: thin, idempotent wrappers around billing.invoicing, called with ids."""

from datetime import date

from celery import shared_task
from django.utils import timezone

from billing import call_costs, invoice_batches, invoicing, tax_calculation


@shared_task(acks_late=True)
def generate_invoice(tenant_id: int, period_start: str) -> int:
    return invoicing.generate_invoice(tenant_id, date.fromisoformat(period_start)).pk


@shared_task(
    acks_late=True,
    autoretry_for=(tax_calculation.TaxServiceUnavailable,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=10,
)
def finalize_invoice(invoice_id: int, force: bool = False) -> str | None:
    """``force`` finalizes before the grace period has passed (the admin's "finalize now"). Under Stripe Tax, an
    unreachable or failing Stripe leaves the invoice a draft (its ``finalization_error`` says why) and the task
    retries with exponential, jittered backoff (about 17 min in all). Any other refusal (an address Stripe Tax
    cannot locate) is not retried here; either way the hourly ``finalize_due_invoices`` queues it again, so it
    is finalized once Stripe answers or staff fixed the address."""
    invoice = invoicing.finalize_invoice(invoice_id, force=force)
    return invoice.number


# A batch's tenants that failed are retried alone, this long after (doubling each time), a few times; after
# that the beat's next run takes them again with everyone else.
RETRY_SECONDS = 60
RETRIES = 3


@shared_task(bind=True, acks_late=True, max_retries=RETRIES)
def invoice_batch(
    self, period_start: str, tenant_ids: list[int], finalize: bool = False, force: bool = False
):
    """A batch of tenants' invoices for a period (billing.invoice_batches): drafts, or finalized invoices."""
    outcome = invoice_batches.invoice_batch(
        date.fromisoformat(period_start), tenant_ids, finalize=finalize, force=force
    )
    if outcome.failed and self.request.retries < RETRIES:
        raise self.retry(
            args=(period_start, outcome.failed, finalize, force),
            countdown=RETRY_SECONDS * 2**self.request.retries,
        )
    return outcome.as_dict()


def queue_batches(
    pairs: list[tuple[int, date]], *, finalize: bool = False, force: bool = False, size: int | None = None
) -> list:
    """One :func:`invoice_batch` task per batch of the (tenant, period) pairs; their results."""
    return [
        invoice_batch.delay(period_start.isoformat(), tenant_ids, finalize, force)
        for period_start, tenant_ids in invoice_batches.batches(pairs, size)
    ]


@shared_task(acks_late=True)
def refresh_drafts() -> int:
    """Beat: keep every billable tenant's current (and not yet finalized previous) draft up to date."""
    pairs = invoicing.tenants_to_bill(timezone.now())
    queue_batches(pairs)
    return len(pairs)


@shared_task(acks_late=True)
def finalize_due_invoices() -> int:
    """Beat: finalize drafts whose period ended more than the grace period ago."""
    due = [(draft.tenant_id, draft.period_start) for draft in invoicing.due_drafts(timezone.now())]
    queue_batches(due, finalize=True)
    return len(due)


@shared_task(acks_late=True)
def refresh_tenant_drafts(tenant_id: int) -> int:
    """Queued by the admin after a change to the tenant's subscriptions."""
    return len(invoicing.refresh_drafts_for(tenant_id))


@shared_task(acks_late=True)
def refresh_plan_drafts(plan_id: int) -> int:
    """Queued by the admin after a change to a plan, its versions, prices or tiers: one task per tenant on
    the plan."""
    tenant_ids = invoicing.tenants_on_plan(plan_id)
    for tenant_id in tenant_ids:
        refresh_tenant_drafts.delay(tenant_id)
    return len(tenant_ids)


@shared_task(acks_late=True)
def prune_tiered_charges() -> int:
    """Beat (daily): forget the tiered charges of events too old to be corrected (billing.call_costs)."""
    return call_costs.prune_charges(timezone.now())
