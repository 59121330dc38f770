"""Taxes in the admin (issue 16 part 4, decision 019): tenants' billing profiles (tax ids checked with
python-stdnum through billing.taxes) and the tax rates staff define per country and region."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Q

from billing import taxes
from billing.admin.drafts import refresh_tenant_drafts_after_commit
from billing.models import BillingProfile, TaxRate


def _country(value: str) -> str:
    value = (value or "").strip().upper()
    if len(value) != 2 or not value.isalpha():
        raise forms.ValidationError("Two letters, ISO 3166-1 alpha-2 (e.g. DE).")
    return value


class BillingProfileForm(forms.ModelForm):
    class Meta:
        model = BillingProfile
        fields = [
            "tenant",
            "legal_name",
            "address_line1",
            "address_line2",
            "postal_code",
            "city",
            "region",
            "country",
            "tax_id",
            "is_business",
        ]

    def clean_country(self):
        return _country(self.cleaned_data["country"])

    def clean(self):
        data = super().clean()
        if "country" in data and data.get("tax_id"):
            try:
                data["tax_id"] = taxes.check_tax_id(data["country"], data["tax_id"])
            except taxes.TaxIdError as error:
                self.add_error("tax_id", str(error))
        return data


@admin.register(BillingProfile)
class BillingProfileAdmin(admin.ModelAdmin):
    form = BillingProfileForm
    list_display = ["tenant", "legal_name", "country", "region", "tax_id", "is_business"]
    search_fields = ["tenant__slug", "legal_name", "tax_id"]
    list_filter = ["country", "is_business"]
    readonly_fields = ["stripe_tax_percent"]  # written by finalization under Stripe Tax (decision 019)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        refresh_tenant_drafts_after_commit(obj.tenant_id)  # the draft's tax follows the profile


class TaxRateForm(forms.ModelForm):
    class Meta:
        model = TaxRate
        fields = ["name", "country", "region", "percent", "inclusive", "effective_from", "effective_to"]

    def clean_country(self):
        return _country(self.cleaned_data["country"])

    def clean(self):
        data = super().clean()
        percent, start, end = data.get("percent"), data.get("effective_from"), data.get("effective_to")
        if percent is not None and not 0 <= percent < 100:
            self.add_error("percent", "From 0 up to (not including) 100.")
        if start and end and end <= start:
            self.add_error("effective_to", "After effective from.")
        if start and "country" in data and not self.errors:
            overlapping = TaxRate.objects.filter(
                country=data["country"], region__iexact=data.get("region", "")
            )
            overlapping = overlapping.filter(Q(effective_to__isnull=True) | Q(effective_to__gt=start))
            if end:
                overlapping = overlapping.filter(effective_from__lt=end)
            if self.instance.pk:
                overlapping = overlapping.exclude(pk=self.instance.pk)
            if overlapping.exists():
                raise forms.ValidationError(
                    f"Another rate for {data['country']} {data.get('region', '')} is in force then: end it first."
                )
        return data


@admin.register(TaxRate)
class TaxRateAdmin(admin.ModelAdmin):
    form = TaxRateForm
    list_display = ["name", "country", "region", "percent", "inclusive", "effective_from", "effective_to"]
    list_filter = ["country", "inclusive"]
