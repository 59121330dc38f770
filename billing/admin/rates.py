"""Provider rates in the admin: what each provider charges the platform, checked by the pricing engine."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from billing import pricing
from billing.admin.fields import EnteredDecimalsMixin
from billing.models import ProviderRate
from billing.money import format_unit_price_with_code


class ProviderRateForm(forms.ModelForm):
    class Meta:
        model = ProviderRate
        fields = [
            "provider",
            "model_pattern",
            "meter",
            "cost_per_unit",
            "unit_size",
            "currency",
            "effective_from",
            "source",
        ]

    def clean_currency(self) -> str:
        return self.cleaned_data["currency"].upper()

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                pricing.ProviderRate(
                    provider=cleaned["provider"],
                    model_pattern=cleaned["model_pattern"],
                    meter=cleaned["meter"].code,
                    cost_per_unit=cleaned["cost_per_unit"],
                    unit_size=cleaned["unit_size"],
                    effective_from=cleaned["effective_from"],
                    currency=cleaned["currency"],
                )
            except ValueError as error:
                raise ValidationError(str(error)) from error
        return cleaned


@admin.register(ProviderRate)
class ProviderRateAdmin(EnteredDecimalsMixin, admin.ModelAdmin):
    form = ProviderRateForm
    list_display = ["provider", "model_pattern", "meter", "cost_text", "effective_from", "origin", "source"]
    list_filter = ["origin", "provider", "meter", "currency", "effective_from"]
    readonly_fields = [
        "origin"
    ]  # staff-typed rates are manual; `manage.py import_provider_rates` sets catalogue
    search_fields = ["provider", "model_pattern", "meter__code", "source"]
    date_hierarchy = "effective_from"

    @admin.display(description="cost", ordering="cost_per_unit")
    def cost_text(self, rate: ProviderRate) -> str:
        return format_unit_price_with_code(rate.cost_per_unit, rate.unit_size, rate.currency)
