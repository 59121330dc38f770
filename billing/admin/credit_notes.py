"""Credit notes in the admin (decision 020): issued from an invoice's page — outcome, reason, memo, and everything
left or chosen amounts or quantities per line — by staff with the ``add credit note`` permission, through
billing.credit_notes (its errors are shown on the fields they name); listed and shown read only (an issued note
never changes). ``payments.admin`` adds their Stripe sync."""

from __future__ import annotations

import secrets
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from billing import credit_notes
from billing.models import CreditNote, CreditNoteLine, Invoice
from billing.money import format_money_with_code, format_quantity

Outcome = CreditNote.Outcome


def money(amount: Decimal, currency: str) -> str:
    return format_money_with_code(amount, currency)


class CreditNoteLineInline(admin.TabularInline):
    model = CreditNoteLine
    fields = [
        "position",
        "invoice_line",
        "description",
        "quantity_text",
        "amount_text",
        "tax_text",
        "total_text",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("credit_note", "invoice_line")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="quantity")
    def quantity_text(self, line: CreditNoteLine) -> str:
        return format_quantity(line.quantity)

    @admin.display(description="amount")
    def amount_text(self, line: CreditNoteLine) -> str:
        return money(line.amount, line.credit_note.currency)

    @admin.display(description="of which tax")
    def tax_text(self, line: CreditNoteLine) -> str:
        return money(line.tax_amount, line.credit_note.currency)

    @admin.display(description="credited")
    def total_text(self, line: CreditNoteLine) -> str:
        return money(line.total, line.credit_note.currency)


@admin.register(CreditNote)
class CreditNoteAdmin(admin.ModelAdmin):
    """Read only: notes are issued from their invoice's page and never change."""

    list_display = ["number", "tenant", "invoice", "issued_at", "reason", "outcome", "total_text", "currency"]
    list_filter = ["outcome", "reason", "currency"]
    list_select_related = ["tenant", "invoice"]
    search_fields = ["number", "invoice__number", "tenant__name", "tenant__slug"]
    date_hierarchy = "issued_at"
    inlines = [CreditNoteLineInline]
    fieldsets = [
        (None, {"fields": ["number", "tenant", "invoice_link", "status", "issued_at", "issued_by"]}),
        ("Why and what", {"fields": ["reason", "memo", "outcome", "grant_link"]}),
        (
            "Amounts",
            {"fields": ["subtotal_text", "discount_text", "tax_text", "deduction_text", "total_text"]},
        ),
        (
            "Stripe",
            {
                "fields": [
                    "sync_state",
                    "stripe_credit_note_id",
                    "stripe_refund_id",
                    "sync_error",
                    "sync_attempted_at",
                    "synced_at",
                ]
            },
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def has_add_permission(self, request) -> bool:
        return False  # issued from the invoice's page (its own permission: add credit note)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="invoice")
    def invoice_link(self, note: CreditNote) -> str:
        url = reverse("admin:billing_invoice_change", args=[note.invoice_id])
        return format_html('<a href="{}">{}</a>', url, note.invoice)

    @admin.display(description="prepaid credit granted")
    def grant_link(self, note: CreditNote) -> str:
        grant = getattr(note, "grant", None)
        if grant is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:billing_creditgrant_change", args=[grant.pk]), grant
        )

    @admin.display(description="subtotal (the lines)")
    def subtotal_text(self, note: CreditNote) -> str:
        return money(note.subtotal, note.currency)

    @admin.display(description="their discounts")
    def discount_text(self, note: CreditNote) -> str:
        return money(-note.discount_amount, note.currency)

    @admin.display(description="their tax")
    def tax_text(self, note: CreditNote) -> str:
        return money(note.tax_amount, note.currency) + (
            " (included in the lines)" if note.tax_included else ""
        )

    @admin.display(description="their deductions (prepaid credit, corrections)")
    def deduction_text(self, note: CreditNote) -> str:
        return money(-note.deduction_amount, note.currency)

    @admin.display(description="credited", ordering="total")
    def total_text(self, note: CreditNote) -> str:
        return money(note.total, note.currency)


class CreditNoteInline(admin.TabularInline):
    """An invoice's credit notes, on its admin page."""

    model = CreditNote
    fields = ["note_link", "issued_at", "reason", "outcome", "credited", "sync_state"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "credit notes"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="number")
    def note_link(self, note: CreditNote) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:billing_creditnote_change", args=[note.pk]), note
        )

    @admin.display(description="credited")
    def credited(self, note: CreditNote) -> str:
        return money(note.total, note.currency)


class CreditNoteForm(forms.Form):
    """The note's terms, and per creditable line an amount or a quantity (used when ``scope`` is ``lines``)."""

    outcome = forms.ChoiceField(choices=Outcome.choices)
    reason = forms.ChoiceField(choices=CreditNote.Reason.choices)
    memo = forms.CharField(
        required=False,
        max_length=credit_notes.MEMO_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Printed on the note; required when the reason is other.",
    )
    scope = forms.ChoiceField(
        choices=[("full", "Everything left to credit"), ("lines", "The amounts or quantities below")],
        widget=forms.RadioSelect,
        initial="full",
    )
    # one per rendered form: submitting it twice issues one note (billing.credit_notes.issue)
    request_key = forms.CharField(widget=forms.HiddenInput, max_length=64, required=False)

    def __init__(self, *args, invoice: Invoice, **kwargs):
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        self.fields["request_key"].initial = secrets.token_urlsafe(24)
        self.rows = credit_notes.creditable_lines(invoice)
        paid = invoice.status == Invoice.Status.PAID
        self.fields["outcome"].initial = Outcome.REFUND if paid else Outcome.REDUCE_DUE
        for row in self.rows:
            line = row.line
            self.fields[f"amount_{line.pk}"] = forms.DecimalField(
                required=False, label=f"amount of {line.description}", disabled=row.by_quantity is True
            )
            if row.quantity_left is not None:
                self.fields[f"quantity_{line.pk}"] = forms.DecimalField(
                    required=False, label=f"quantity of {line.description}"
                )

    @property
    def terms(self) -> list[forms.BoundField]:
        return [self[name] for name in ("outcome", "reason", "memo", "scope")]

    def line_rows(self) -> list[dict]:
        currency = self.invoice.currency
        return [
            {
                "line": row.line,
                "amount": money(row.line.amount, currency),
                "credited": money(row.credited, currency),
                "left": money(row.left, currency),
                "quantity_left": format_quantity(row.quantity_left) if row.quantity_left is not None else "",
                "amount_field": self[f"amount_{row.line.pk}"],
                "quantity_field": self[f"quantity_{row.line.pk}"] if row.quantity_left is not None else None,
            }
            for row in self.rows
        ]

    def requests(self) -> list[credit_notes.Request] | None:
        """What to credit: None for everything left, else a request per line with an amount or a quantity."""
        if self.cleaned_data["scope"] == "full":
            return None
        requests = []
        for row in self.rows:
            amount = self.cleaned_data.get(f"amount_{row.line.pk}")
            quantity = self.cleaned_data.get(f"quantity_{row.line.pk}")
            if amount is not None or quantity is not None:
                requests.append(credit_notes.Request(row.line.pk, amount=amount, quantity=quantity))
        return requests

    def show(self, error: credit_notes.CreditNoteError) -> None:
        """Put the service's error on the field it names (a line's amount or quantity, or a term)."""
        name = error.field
        if error.line_id is not None:
            kind = "quantity" if error.field == "quantity" else "amount"
            name = f"{kind}_{error.line_id}"
            if name not in self.fields:
                name = None
        elif name not in self.fields:
            name = None
        self.add_error(name, error.message)


def issue_view(model_admin: admin.ModelAdmin, request, invoice: Invoice | None):
    """The invoice admin's "Issue credit note" page."""
    if invoice is None:
        raise Http404
    if not request.user.has_perm("billing.add_creditnote"):
        raise PermissionDenied
    form = CreditNoteForm(request.POST or None, invoice=invoice)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            note = credit_notes.issue(
                invoice.pk,
                outcome=data["outcome"],
                reason=data["reason"],
                memo=data["memo"],
                lines=form.requests(),
                by=request.user,
                request_key=data["request_key"],
            )
        except credit_notes.CreditNoteError as error:
            form.show(error)
        else:
            model_admin.message_user(
                request,
                f"Issued {note.number} on {invoice}: {money(note.total, note.currency)} credited "
                f"({note.get_outcome_display()}).",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:billing_creditnote_change", args=[note.pk]))
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Issue a credit note on {invoice}",
        "invoice": invoice,
        "form": form,
        "total": money(invoice.total, invoice.currency),
        "left": money(credit_notes.left_to_credit(invoice), invoice.currency),
        "due": money(credit_notes.amount_due(invoice), invoice.currency),
    }
    return TemplateResponse(request, "admin/billing/invoice/credit_note.html", context)
