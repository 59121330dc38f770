"""Prices and their tiers in the admin, checked by the pricing engine's own dataclasses: the admin cannot
store a price, or a version's set of prices, that ``billing.pricing`` would refuse."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from billing import period_pricing, pricing
from billing.admin.audit import PlanAuditMixin
from billing.admin.locked_versions import LockedVersionInlineMixin, LockedVersionMixin
from billing.models import PlanVersion, Price, PriceTier
from billing.money import format_money_with_code, format_quantity, format_unit_price_with_code

PRICE_ARGUMENTS = [
    "provider",
    "model_pattern",
    "price_model",
    "unit_amount",
    "unit_size",
    "package_size",
    "package_amount",
    "markup",
    "free_allowance",
    "minimum_charge",
]
PRICE_FIELDS = ["meter", *PRICE_ARGUMENTS]
TIERED = {pricing.PriceModel.GRADUATED, pricing.PriceModel.VOLUME}
SAME_SCOPE_HINT = " (provider and model pattern are compared regardless of case)"


def as_pricing_price(meter: object, values: Mapping, tiers: Iterable[pricing.Tier]) -> pricing.Price:
    return pricing.Price(
        meter=getattr(meter, "code", meter), tiers=tuple(tiers), **{n: values[n] for n in PRICE_ARGUMENTS}
    )


def stored_pricing_price(price: Price) -> pricing.Price:
    return period_pricing.price_for(price)


def check_version_prices(currency: str, prices: Iterable[pricing.Price]) -> None:
    """Raise ValidationError if the prices cannot form one plan version (two prices on the same scope)."""
    try:
        pricing.Plan(currency=currency, prices=tuple(prices))
    except ValueError as error:
        raise ValidationError(f"{error}{SAME_SCOPE_HINT}") from error


class PriceForm(forms.ModelForm):
    """A price as the engine will read it. Where tiers are not edited alongside (a version's page), the
    check uses the stored tiers."""

    is_standalone = False  # the price's own page: tiers come in a formset, sibling prices from the database

    class Meta:
        model = Price
        fields = ["version", *PRICE_FIELDS]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        values = {n: cleaned[n] if n in cleaned else getattr(self.instance, n) for n in PRICE_ARGUMENTS}
        meter = cleaned.get("meter") or self.instance.meter_id
        model = pricing.PriceModel(values["price_model"])
        if self.is_standalone:
            tiers = [pricing.Tier(None)] if model in TIERED else []  # the tier formset checks the real ones
        else:
            tiers = self._stored_tiers()
            if model in TIERED and not tiers:
                raise ValidationError(
                    f"{model} prices need tiers, which are edited on the price's own page: add or change "
                    "this price there."
                )
        try:
            self.pricing_price = as_pricing_price(meter, values, tiers)
        except ValueError as error:
            hint = (
                " (its tiers are edited on the price's own page)" if tiers and not self.is_standalone else ""
            )
            raise ValidationError(f"{error}{hint}") from error
        version = cleaned.get("version") or (self.instance.version if self.instance.version_id else None)
        if self.is_standalone and version is not None:
            check_version_prices(version.plan.currency, [*self._stored_siblings(version), self.pricing_price])
        return cleaned

    def _stored_tiers(self) -> list[pricing.Tier]:
        if self.instance.pk is None:
            return []
        return [pricing.Tier(t.up_to, t.unit_amount, t.flat_amount) for t in self.instance.tiers.all()]

    def _stored_siblings(self, version: PlanVersion) -> list[pricing.Price]:
        siblings = []
        for price in version.prices.exclude(pk=self.instance.pk).prefetch_related("tiers"):
            try:
                siblings.append(stored_pricing_price(price))
            except ValueError:
                continue  # a stored price the engine refuses is reported on its own page, not this one
        return siblings


class StandalonePriceForm(PriceForm):
    is_standalone = True


class PriceFormSet(BaseInlineFormSet):
    """A version's prices together must form one plan the engine accepts."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        prices = [
            form.pricing_price
            for form in self.forms
            if hasattr(form, "pricing_price") and not self._should_delete_form(form)
        ]
        currency = self.instance.plan.currency if self.instance.plan_id else "USD"
        check_version_prices(currency, prices)


class PriceInline(LockedVersionInlineMixin, admin.TabularInline):
    model = Price
    form = PriceForm
    formset = PriceFormSet
    fields = [*PRICE_FIELDS, "tier_summary"]
    readonly_fields = ["tier_summary"]
    extra = 0
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tiers")

    @admin.display(description="tiers")
    def tier_summary(self, price: Price) -> str:
        if price.pk is None:
            return "—"
        return "; ".join(str(t) for t in price.tiers.all()) or "—"


class PriceTierForm(forms.ModelForm):
    class Meta:
        model = PriceTier
        fields = ["up_to", "unit_amount", "flat_amount"]

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                self.tier = pricing.Tier(cleaned.get("up_to"), cleaned["unit_amount"], cleaned["flat_amount"])
            except ValueError as error:
                raise ValidationError(str(error)) from error
        return cleaned


class PriceTierFormSet(BaseInlineFormSet):
    """The tiers of one price, checked together with its price model as the engine will read them."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        tiers = [
            form.tier for form in self.forms if hasattr(form, "tier") and not self._should_delete_form(form)
        ]
        # The engine reads tiers in the model's order: by bound, the unbounded one last.
        tiers.sort(key=lambda t: (t.up_to is None, t.up_to or 0))
        price = self.instance
        if price.price_model not in set(pricing.PriceModel):
            return  # the price's own form reports it
        try:
            pricing.Price(meter=price.meter_id or "", price_model=price.price_model, tiers=tuple(tiers))
        except ValueError as error:
            raise ValidationError(str(error)) from error


class PriceTierInline(LockedVersionInlineMixin, admin.TabularInline):
    model = PriceTier
    form = PriceTierForm
    formset = PriceTierFormSet
    extra = 0


@admin.register(Price)
class PriceAdmin(LockedVersionMixin, PlanAuditMixin, admin.ModelAdmin):
    form = StandalonePriceForm
    list_display = [
        "__str__",
        "version",
        "price_model",
        "unit_price_text",
        "free_allowance_text",
        "minimum_charge_text",
    ]
    list_filter = ["version__plan", "price_model", "meter"]
    list_select_related = ["version__plan"]
    search_fields = ["meter__code", "provider", "model_pattern"]
    inlines = [PriceTierInline]

    def get_fields(self, request, obj=None):
        return ["version", *PRICE_FIELDS]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["version"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "version":
            kwargs["queryset"] = PlanVersion.objects.filter(is_locked=False).select_related("plan")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="price")
    def unit_price_text(self, price: Price) -> str:
        currency = price.version.plan.currency
        if price.price_model == pricing.PriceModel.PACKAGE:
            return format_unit_price_with_code(price.package_amount, price.package_size, currency)
        if price.price_model == pricing.PriceModel.COST_PLUS:
            return f"provider cost + {format_quantity(price.markup * 100)} %"
        if price.price_model in TIERED:
            return "tiered"
        return format_unit_price_with_code(price.unit_amount, price.unit_size, currency)

    @admin.display(description="free allowance", ordering="free_allowance")
    def free_allowance_text(self, price: Price) -> str:
        return format_quantity(price.free_allowance)

    @admin.display(description="minimum charge", ordering="minimum_charge")
    def minimum_charge_text(self, price: Price) -> str:
        return format_money_with_code(price.minimum_charge, price.version.plan.currency)
