"""Invoices in the admin: read only, with refresh, finalize and void as the only edits (``billing.invoicing``),
and the invoice preview, which prices any period under any plan and stores nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import date
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import credit_notes, invoicing, period_pricing, periods
from billing.admin.credit_notes import CreditNoteInline, issue_view
from billing.models import Invoice, InvoiceLine, PricePlan
from billing.money import (
    format_margin_percent,
    format_money_with_code,
    format_quantity,
    format_unit_price_with_code,
)
from tenants.models import Tenant
from usage.admin import ReadOnlyAdmin

logger = logging.getLogger(__name__)


def _refresh(invoice: Invoice) -> str:
    if invoice.is_finalized:
        raise ValueError("it is finalized and never changes")
    invoice = invoicing.generate_invoice(invoice.tenant_id, invoice.period_start)
    return f"Refreshed {invoice}: {format_money_with_code(invoice.total, invoice.currency)}."


def _finalize(invoice: Invoice) -> str:
    if invoice.is_finalized:
        raise ValueError(f"it is already finalized ({invoice.status})")
    invoice = invoicing.finalize_invoice(invoice.pk, force=True)
    return f"Finalized {invoice} for {invoice.tenant}: {format_money_with_code(invoice.total, invoice.currency)}."


def _void(invoice: Invoice) -> str:
    invoice = invoicing.void_invoice(invoice.pk)
    return f"Voided {invoice}."


def unit_price_text(line: InvoiceLine | period_pricing.LineDraft, currency: str) -> str:
    """A line's unit price; a tiered price's line shows its average price, marked as such."""
    is_average = line.price_snapshot.get("price_model") in ("graduated", "volume")
    return format_unit_price_with_code(line.unit_price, line.unit_size, currency, is_average=is_average)


# name → (label, operation, statuses it applies to)
INVOICE_OPERATIONS: dict[str, tuple[str, Callable[[Invoice], str], set[str]]] = {
    "refresh": ("Refresh draft", _refresh, {Invoice.Status.DRAFT}),
    "finalize": ("Finalize now", _finalize, {Invoice.Status.DRAFT}),
    "void": ("Void", _void, {Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE}),
}


class InvoiceLineInline(ReadOnlyAdmin, admin.TabularInline):
    """Lines are generated, so they are always read only."""

    model = InvoiceLine
    fields = [
        "position",
        "kind",
        "description",
        "segment",
        "quantity_text",
        "allowance_text",
        "billable_text",
        "unit_price_text",
        "amount_text",
        "platform_cost_text",
        "margin_text",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("invoice")

    @admin.display(description="dates")
    def segment(self, line: InvoiceLine) -> str:
        text = f"{line.segment_start} – {line.segment_end}"
        if line.adjusted_period_start:
            text += f" (corrects {line.adjusted_period_start:%B %Y})"
        return text

    @admin.display(description="quantity")
    def quantity_text(self, line: InvoiceLine) -> str:
        return format_quantity(line.quantity)

    @admin.display(description="allowance")
    def allowance_text(self, line: InvoiceLine) -> str:
        return format_quantity(line.allowance)

    @admin.display(description="billable")
    def billable_text(self, line: InvoiceLine) -> str:
        return format_quantity(line.billable_quantity)

    @admin.display(description="unit price")
    def unit_price_text(self, line: InvoiceLine) -> str:
        return unit_price_text(line, line.invoice.currency)

    @admin.display(description="amount")
    def amount_text(self, line: InvoiceLine) -> str:
        return format_money_with_code(line.amount, line.invoice.currency)

    @admin.display(description="platform cost")
    def platform_cost_text(self, line: InvoiceLine) -> str:
        return format_money_with_code(line.platform_cost, line.invoice.currency)

    @admin.display(description="margin")
    def margin_text(self, line: InvoiceLine) -> str:
        if line.platform_cost is None:
            return "—"
        return format_money_with_code(line.amount - line.platform_cost, line.invoice.currency)


def unmatched_table(unmatched: list[dict]) -> str:
    """Usage no price matched, as an HTML table: it is never billed, so it must be seen."""
    if not unmatched:
        return "None"
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} – {}</td></tr>",
        (
            (
                u.get("meter"),
                u.get("provider") or "—",
                u.get("model") or "—",
                format_quantity(Decimal(u.get("quantity", "0"))),
                u.get("reason"),
                u.get("segment_start"),
                u.get("segment_end"),
            )
            for u in unmatched
        ),
    )
    return format_html(
        '<p class="errornote">{} usage group(s) matched no price and are not billed.</p>'
        "<table><thead><tr><th>meter</th><th>provider</th><th>model</th><th>quantity</th><th>reason</th>"
        "<th>dates</th></tr></thead><tbody>{}</tbody></table>",
        len(unmatched),
        rows,
    )


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices are generated: every field is read only, drafts included; the only edits are the actions."""

    list_display = [
        "invoice_number",
        "tenant",
        "period",
        "status",
        "total_text",
        "currency",
        "platform_cost_text",
        "margin_text",
        "unmatched_count",
    ]
    list_filter = ["status", "currency", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["number", "tenant__name", "tenant__slug"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline, CreditNoteInline]
    actions = ["refresh_drafts", "finalize_now", "void"]
    main_fields = ["number", "tenant", "period", "status", "currency"]
    amount_fields = ["total_text", "platform_cost_text", "margin_text", "credited_text", "amount_due_text"]
    date_fields = ["generated_at", "finalized_at", "status_changed_at", "created_at"]
    shown_elsewhere = {"period_start", "period_end", "total", "platform_cost", "unmatched"}
    # The last fieldset holds every other stored field, then these computed ones: an app that owns some of
    # those fields subclasses this admin to name the fieldset and add its own (with list_display and actions).
    other_fields_title = "Other"
    other_computed_fields: list = []

    def get_fieldsets(self, request, obj=None):
        listed = {*self.main_fields, *self.date_fields, *self.shown_elsewhere}
        others = [f.name for f in Invoice._meta.concrete_fields if not f.primary_key and f.name not in listed]
        unmatched = ("Unmatched usage (not billed)", {"fields": ["unmatched_usage"]})
        fieldsets = [
            (None, {"fields": self.main_fields}),
            ("Amounts", {"fields": self.amount_fields}),
            unmatched,
            ("Dates", {"fields": self.date_fields}),
        ]
        if others:
            fieldsets.append((self.other_fields_title, {"fields": [*others, *self.other_computed_fields]}))
        if obj is not None and obj.unmatched:
            fieldsets.remove(unmatched)
            fieldsets.insert(0, unmatched)
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.get_fieldsets(request, obj) for name in options["fields"]]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="number", ordering="number")
    def invoice_number(self, invoice: Invoice) -> str:
        return invoice.number or "(draft)"

    @admin.display(description="period", ordering="period_start")
    def period(self, invoice: Invoice) -> str:
        last_day = invoice.period_end.toordinal() - 1
        return f"{invoice.period_start} – {date.fromordinal(last_day)}"

    @admin.display(description="total", ordering="total")
    def total_text(self, invoice: Invoice) -> str:
        return format_money_with_code(invoice.total, invoice.currency)

    @admin.display(description="platform cost", ordering="platform_cost")
    def platform_cost_text(self, invoice: Invoice) -> str:
        return format_money_with_code(invoice.platform_cost, invoice.currency)

    @admin.display(description="margin", ordering=F("total") - F("platform_cost"))
    def margin_text(self, invoice: Invoice) -> str:
        margin = invoice.total - invoice.platform_cost
        return f"{format_money_with_code(margin, invoice.currency)} ({format_margin_percent(margin, invoice.total)})"

    @admin.display(description="credited by credit notes")
    def credited_text(self, invoice: Invoice) -> str:
        return format_money_with_code(credit_notes.credited(invoice), invoice.currency)

    @admin.display(description="still due")
    def amount_due_text(self, invoice: Invoice) -> str:
        return format_money_with_code(credit_notes.amount_due(invoice), invoice.currency)

    @admin.display(description="unmatched")
    def unmatched_count(self, invoice: Invoice) -> str:
        if not invoice.unmatched:
            return "—"
        return format_html('<strong class="unmatched">⚠ {}</strong>', len(invoice.unmatched))

    @admin.display(description="unmatched usage")
    def unmatched_usage(self, invoice: Invoice) -> str:
        return unmatched_table(invoice.unmatched)

    def _run(self, request, invoices: Iterable[Invoice], name: str) -> None:
        """Apply one operation to each invoice; report each outcome, never a 500."""
        label, operation, _ = INVOICE_OPERATIONS[name]
        for invoice in invoices:
            try:
                message = operation(invoice)
            except ValueError as error:
                self.message_user(request, f"{label}: {invoice} not changed: {error}.", messages.ERROR)
            except Exception as error:
                logger.exception("admin %s of invoice %s failed", name, invoice.pk)
                self.message_user(
                    request,
                    f"{label}: {invoice} failed ({type(error).__name__}: {error}); see the server log.",
                    messages.ERROR,
                )
            else:
                self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Refresh draft", permissions=["change"])
    def refresh_drafts(self, request, queryset):
        self._run(request, queryset, "refresh")

    @admin.action(description="Finalize now", permissions=["change"])
    def finalize_now(self, request, queryset):
        self._run(request, queryset.order_by("period_start", "pk"), "finalize")

    @admin.action(description="Void", permissions=["change"])
    def void(self, request, queryset):
        self._run(request, queryset, "void")

    def get_urls(self):
        return [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="billing_invoice_preview"),
            path(
                "unpriced/", self.admin_site.admin_view(self.unpriced_view), name="billing_invoice_unpriced"
            ),
            path(
                "<path:object_id>/run/<str:operation>/",
                self.admin_site.admin_view(self.operation_view),
                name="billing_invoice_operation",
            ),
            path(
                "<path:object_id>/credit-note/",
                self.admin_site.admin_view(self.credit_note_view),
                name="billing_invoice_credit_note",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        invoice = self.get_object(request, unquote(object_id))
        operations = []
        if invoice is not None and self.has_change_permission(request):
            operations = [(n, op[0]) for n, op in INVOICE_OPERATIONS.items() if invoice.status in op[2]]
        credit_note_url = ""
        if (
            invoice is not None
            and request.user.has_perm("billing.add_creditnote")
            and credit_notes.left_to_credit(invoice) > 0
        ):
            credit_note_url = reverse("admin:billing_invoice_credit_note", args=[invoice.pk])
        return super().change_view(
            request,
            object_id,
            form_url,
            {**(extra_context or {}), "invoice_operations": operations, "credit_note_url": credit_note_url},
        )

    def credit_note_view(self, request, object_id):
        return issue_view(self, request, self.get_object(request, unquote(object_id)))

    def operation_view(self, request, object_id, operation):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        invoice = self.get_object(request, unquote(object_id))
        if invoice is None or operation not in INVOICE_OPERATIONS:
            raise Http404
        self._run(request, [invoice], operation)
        return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[invoice.pk]))

    def preview_view(self, request):
        """Price a tenant's usage for any period under any plan, with cost and margin. Stores nothing."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = InvoicePreviewForm(request.GET if "tenant" in request.GET else None)
        preview = None
        if form.is_bound and form.is_valid():
            try:
                preview = invoice_preview(**form.cleaned_data)
            except ValueError as error:
                form.add_error(None, f"This plan cannot price usage: {error}")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Preview an invoice",
            "form": form,
            "preview": preview,
        }
        return TemplateResponse(request, "admin/billing/invoice/preview.html", context)

    def unpriced_view(self, request):
        """Every tenant's usage that no price matches, from its invoices (drafts are kept current by beat, so the
        current period is there too; void invoices are left out): what would otherwise go unbilled unseen."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        invoices = (
            Invoice.objects.exclude(unmatched=[])
            .exclude(status=Invoice.Status.VOID)
            .select_related("tenant")
            .order_by("-period_start", "tenant__name")
        )
        rows = [
            {"invoice": invoice, **entry, "quantity": Decimal(entry["quantity"])}
            for invoice in invoices[:500]
            for entry in invoice.unmatched
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Unpriced usage of every tenant",
            "rows": rows,
        }
        return TemplateResponse(request, "admin/billing/invoice/unpriced.html", context)


class InvoicePreviewForm(forms.Form):
    tenant = forms.ModelChoiceField(Tenant.objects.order_by("name"))
    plan = forms.ModelChoiceField(
        PricePlan.objects.order_by("name"),
        required=False,
        empty_label="(the tenant's own subscriptions)",
        help_text="Any plan, to see what the tenant would pay under it.",
    )
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    end = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The first day after the period (exclusive), in the tenant's time zone.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        start = periods.month_start(timezone.localdate())
        self.fields["start"].initial = start
        self.fields["end"].initial = periods.next_month(start)

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end <= start:
            raise ValidationError("The end must come after the start.")
        return cleaned


def invoice_preview(tenant: Tenant, plan: PricePlan | None, start: date, end: date) -> dict:
    """What ``period_pricing.price_period`` gives, laid out for the preview page (read-only)."""
    priced = period_pricing.price_period(tenant, start, end, plan=plan)
    currency = priced.currency
    lines = [
        {
            "description": line.description,
            "kind": line.kind,
            "quantity": format_quantity(line.quantity),
            "allowance": format_quantity(line.allowance),
            "billable": format_quantity(line.billable_quantity),
            "unit_price": unit_price_text(line, currency),
            "amount": format_money_with_code(line.amount, currency),
            "platform_cost": format_money_with_code(line.platform_cost, currency),
            "margin": "—"
            if line.platform_cost is None
            else format_money_with_code(line.amount - line.platform_cost, currency),
        }
        for line in priced.lines
    ]
    margin = priced.total - priced.platform_cost
    return {
        "tenant": tenant,
        "plan": plan,
        "start": start,
        "end": end,
        "currency": currency,
        "lines": lines,
        "total": priced.total,
        "total_text": format_money_with_code(priced.total, currency),
        "platform_cost_text": format_money_with_code(priced.platform_cost, currency),
        "margin_text": format_money_with_code(margin, currency),
        "margin_percent": format_margin_percent(margin, priced.total),
        "uncosted": sum(1 for line in priced.lines if line.kind == "usage" and line.platform_cost is None),
        "unmatched": unmatched_table(priced.unmatched) if priced.unmatched else "",
    }
