"""The invoice's events in the outbox, one shape for every type (version 1, docs/webhooks.md).

Recorded in the transaction that changes the invoice (billing.invoicing for created, finalized and voided;
payments.stripe_sync for what Stripe reports), so a tenant's webhook never announces a change that rolled back.
The shape only grows: a field is never renamed, removed or retyped under the same event type.
"""

from __future__ import annotations

from typing import Any

from billing.models import Invoice
from notifications import outbox

INVOICE_CREATED = "invoice.created"
INVOICE_FINALIZED = "invoice.finalized"
INVOICE_PAID = "invoice.paid"
INVOICE_VOIDED = "invoice.voided"
INVOICE_MARKED_UNCOLLECTIBLE = "invoice.marked_uncollectible"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"

# The event a move to each status reports.
STATUS_EVENTS = {
    Invoice.Status.PAID: INVOICE_PAID,
    Invoice.Status.VOID: INVOICE_VOIDED,
    Invoice.Status.UNCOLLECTIBLE: INVOICE_MARKED_UNCOLLECTIBLE,
}


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    """Ids, dates and decimal strings only: what a receiver needs to find the invoice and act on it."""
    return {
        "invoice_id": invoice.pk,
        "number": invoice.number,
        "status": invoice.status,
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "currency": invoice.currency,
        "total": str(invoice.total),
        "status_changed_at": invoice.status_changed_at.isoformat() if invoice.status_changed_at else None,
    }


def record(invoice: Invoice, event_type: str) -> None:
    """Record ``event_type`` for ``invoice`` as it is now, in the caller's transaction."""
    outbox.record(invoice.tenant_id, event_type, invoice_data(invoice))
