"""The invoice admin with the Stripe sync (DESIGN §7): its state in the list, the 'retry sync' action and a
link to the Stripe invoice, from ``billing.stripe_admin``.

Every Stripe part of the invoice admin is here, so it can leave billing in one piece: this subclass replaces
the plain ``InvoiceAdmin`` registered by ``billing.admin.invoices``, the way ``BilledTenantAdmin`` replaces
the tenant admin.
"""

from __future__ import annotations

from django.contrib import admin

from billing.admin.invoices import InvoiceAdmin
from billing.models import Invoice
from billing.stripe_admin import retry_stripe_sync, stripe_invoice_link, stripe_sync_summary


class StripeInvoiceAdmin(InvoiceAdmin):
    list_display = [*InvoiceAdmin.list_display, stripe_sync_summary]
    actions = [*InvoiceAdmin.actions, retry_stripe_sync]
    other_fields_title = "Stripe and other"
    other_computed_fields = [*InvoiceAdmin.other_computed_fields, stripe_invoice_link]


admin.site.unregister(Invoice)
admin.site.register(Invoice, StripeInvoiceAdmin)
