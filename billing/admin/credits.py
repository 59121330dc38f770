"""Prepaid credit in the admin (issue 15 part 9): grant credit, reverse or adjust it with a reason, see every
tenant's ledger. Every write goes through billing.credits (the ledger is append-only: nothing is edited)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from billing import credits
from billing.models import CreditGrant, LedgerEntry, TopUp


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    fields = ["created_at", "kind", "amount", "invoice", "reason", "created_by"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class CreditGrantForm(forms.ModelForm):
    class Meta:
        model = CreditGrant
        fields = ["tenant", "source", "amount", "priority", "effective_at", "expires_at", "reason"]

    def clean(self):
        cleaned = super().clean()
        if not self.errors and not self.instance.pk:
            try:
                credits.check_grant(
                    cleaned["tenant"],
                    cleaned["amount"],
                    cleaned["source"],
                    cleaned.get("reason", ""),
                    cleaned.get("effective_at"),
                    cleaned.get("expires_at"),
                )
            except credits.CreditError as error:
                raise ValidationError(str(error)) from error
        return cleaned


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):
    form = CreditGrantForm
    list_display = [
        "tenant",
        "source",
        "amount",
        "currency",
        "left",
        "priority",
        "effective_at",
        "expires_at",
    ]
    list_filter = ["source", "currency"]
    search_fields = ["tenant__slug", "tenant__name", "reason"]
    inlines = [LedgerEntryInline]

    @admin.display(description="left")
    def left(self, grant: CreditGrant):
        return credits.remaining(grant)

    def get_readonly_fields(self, request, obj=None):
        # a grant is never edited: reverse or adjust it (Ledger entries), which the ledger records
        return [*CreditGrantForm.Meta.fields, "currency"] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data
        try:
            made = credits.grant(
                data["tenant"],
                data["amount"],
                source=data["source"],
                reason=data["reason"],
                priority=data["priority"],
                effective_at=data["effective_at"],
                expires_at=data["expires_at"],
                by=request.user,
            )
        except credits.CreditError as error:  # a race with another write since the form was checked
            messages.error(request, str(error))
            return
        obj.pk = made.pk

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class LedgerEntryForm(forms.ModelForm):
    """A staff correction: reverse (part of) what is left of a grant, or adjust it up or down."""

    kind = forms.ChoiceField(choices=[("reversal", "reversal"), ("adjustment", "adjustment")])
    amount = forms.DecimalField(
        max_digits=18,
        decimal_places=4,
        help_text="Reversal: the amount to take back (empty field not allowed; positive). Adjustment: signed.",
    )

    class Meta:
        model = LedgerEntry
        fields = ["grant", "kind", "amount", "reason"]

    def clean(self):
        cleaned = super().clean()
        if not (cleaned.get("reason") or "").strip():
            self.add_error("reason", "A reason is required.")
        if not self.errors:
            try:
                # the entry as it will be stored (a reversal carries a negative amount), so the model's own
                # constraints check it too
                cleaned["amount"] = credits.check_correction(
                    cleaned["grant"], cleaned["kind"], cleaned["amount"]
                )
                self.instance.tenant_id = cleaned["grant"].tenant_id
            except credits.CreditError as error:
                self.add_error("amount", str(error))
        return cleaned


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    form = LedgerEntryForm
    list_display = ["created_at", "tenant", "kind", "amount", "grant", "invoice", "reason", "created_by"]
    list_filter = ["kind"]
    search_fields = ["tenant__slug", "reason"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return (
            ["tenant", "grant", "kind", "amount", "invoice", "reason", "created_by", "created_at"]
            if obj
            else []
        )

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data
        try:
            if data["kind"] == "reversal":
                made = credits.reverse(data["grant"], -data["amount"], reason=data["reason"], by=request.user)
            else:
                made = credits.adjust(data["grant"], data["amount"], reason=data["reason"], by=request.user)
        except credits.CreditError as error:  # a race with another write since the form was checked
            messages.error(request, str(error))
            return
        obj.pk = made.pk

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TopUp)
class TopUpAdmin(admin.ModelAdmin):
    """Top-ups and auto-recharges (read only: Stripe and the ledger decide what happens to them)."""

    list_display = ["created_at", "tenant", "amount", "currency", "automatic", "status", "stripe_invoice_id"]
    list_filter = ["status", "automatic"]
    search_fields = ["tenant__slug", "stripe_invoice_id"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in TopUp._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
