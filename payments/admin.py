"""The invoice and credit note admins with the Stripe sync (DESIGN §7): its state in the list, the 'retry sync'
action and a link to the Stripe invoice.

Billing's ``InvoiceAdmin`` knows nothing of Stripe; this subclass adds the Stripe parts and replaces it (payments
is installed after billing, so billing's admin is registered by then), the way ``BilledTenantAdmin`` replaces
the tenant admin.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.utils.html import format_html

from billing.admin.credit_notes import CreditNoteAdmin
from billing.admin.invoices import InvoiceAdmin
from billing.models import CreditNote, Invoice
from payments import credit_notes, stripe_sync, tasks
from payments.models import StripeEvent


def _retry(
    modeladmin: admin.ModelAdmin, request, queryset, mark_for_retry, task, what: str, skipped_why: str
):
    """Set the chosen objects' syncs back to pending (``mark_for_retry`` says which can be) and queue them."""
    if not stripe_sync.is_configured():
        modeladmin.message_user(request, "Stripe is not configured (STRIPE_API_KEY).", messages.ERROR)
        return
    ids = mark_for_retry(queryset.values_list("pk", flat=True))
    for pk in ids:
        task.delay(pk)
    skipped = queryset.count() - len(ids)
    text = f"Queued the Stripe sync of {len(ids)} {what}."
    if skipped:
        text += f" Skipped {skipped}: {skipped_why}."
    modeladmin.message_user(request, text, messages.SUCCESS if ids else messages.WARNING)


@admin.action(description="Retry Stripe sync")
def retry_stripe_sync(modeladmin: admin.ModelAdmin, request, queryset) -> None:
    _retry(
        modeladmin,
        request,
        queryset,
        stripe_sync.mark_for_retry,
        tasks.sync_invoice_to_stripe,
        "invoice(s)",
        "drafts, already synced, or settled here before they reached Stripe",
    )


@admin.display(description="Stripe invoice")
def stripe_invoice_link(invoice: Invoice) -> str:
    if not invoice.stripe_invoice_id:
        return "—"
    mode = "test/" if settings.STRIPE_API_KEY.startswith(("sk_test_", "rk_test_")) else ""
    return format_html(
        '<a href="https://dashboard.stripe.com/{}invoices/{}" target="_blank" rel="noopener">{}</a>',
        mode,
        invoice.stripe_invoice_id,
        invoice.stripe_invoice_id,
    )


@admin.display(description="Stripe sync", ordering="sync_state")
def stripe_sync_summary(invoice: Invoice) -> str:
    summary = invoice.get_sync_state_display()
    if invoice.stripe_status:
        summary += f" · Stripe: {invoice.stripe_status}"
    if invoice.sync_error:
        summary += f" · {invoice.sync_error[:80]}"
    return summary


class StripeInvoiceAdmin(InvoiceAdmin):
    list_display = [*InvoiceAdmin.list_display, stripe_sync_summary]
    actions = [*InvoiceAdmin.actions, retry_stripe_sync]
    other_fields_title = "Stripe and other"
    other_computed_fields = [*InvoiceAdmin.other_computed_fields, stripe_invoice_link]


admin.site.unregister(Invoice)
admin.site.register(Invoice, StripeInvoiceAdmin)


@admin.action(description="Retry Stripe sync")
def retry_credit_note_sync(modeladmin: admin.ModelAdmin, request, queryset) -> None:
    _retry(
        modeladmin,
        request,
        queryset,
        credit_notes.mark_for_retry,
        tasks.sync_credit_note_to_stripe,
        "credit note(s)",
        "already synced, or their invoice is not on Stripe",
    )


@admin.display(description="Stripe sync", ordering="sync_state")
def credit_note_sync_summary(note: CreditNote) -> str:
    summary = note.get_sync_state_display()
    if note.sync_error:
        summary += f" · {note.sync_error[:80]}"
    return summary


class StripeCreditNoteAdmin(CreditNoteAdmin):
    list_display = [*CreditNoteAdmin.list_display, credit_note_sync_summary]
    list_filter = [*CreditNoteAdmin.list_filter, "sync_state"]
    actions = [retry_credit_note_sync]


admin.site.unregister(CreditNote)
admin.site.register(CreditNote, StripeCreditNoteAdmin)


class ReviewFilter(admin.SimpleListFilter):
    """Events that named one of our invoices but were not a copy of it: a person decides what they were."""

    title = "review"
    parameter_name = "review"

    def lookups(self, request, model_admin):
        return [("held", "Held for review")]

    def queryset(self, request, queryset):
        if self.value() == "held":
            return queryset.filter(outcome__startswith=stripe_sync.HELD_FOR_REVIEW)
        return queryset


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    """Stripe's webhook events as received: read only (they are Stripe's record, and our invoices' audit)."""

    list_display = ["received_at", "event_id", "type", "invoice", "outcome"]
    list_filter = [ReviewFilter, "type"]
    search_fields = ["event_id", "invoice__number"]
    list_select_related = ["invoice"]
    readonly_fields = ["event_id", "type", "invoice", "outcome", "received_at", "processed_at", "payload"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
