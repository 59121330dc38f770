"""Prices and their tiers in the admin, checked by the pricing engine's own dataclasses: the admin cannot
store a price, or a version's set of prices, that ``billing.pricing`` would refuse."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from billing import period_pricing, pricing
from billing.admin.fields import (
    EnteredDecimalsMixin,
    TiersField,
    parse_tiers,
    show_amounts_in,
    tiers_text,
)
from billing.admin.locked_versions import LockedVersionInlineMixin
from billing.admin.plan_parts import PlanPartAdmin
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
    """A price as the engine will read it. On a version's page its tiers are text lines in the same row
    (``tiers``), so a graduated or volume price is added in one save; on the price's own page
    (``StandalonePriceForm``) they are a formset, which checks them."""

    tiers = TiersField()
    is_standalone = False

    class Meta:
        model = Price
        fields = ["version", *PRICE_FIELDS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.pk is not None
        if "tiers" in self.fields and stored:
            self.initial.setdefault("tiers", tiers_text(self.instance.tiers.all()))
        show_amounts_in(self, self.instance.version.plan.currency if stored else None)

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
            tiers = parse_tiers(cleaned.get("tiers", ""))
        try:
            self.pricing_price = as_pricing_price(meter, values, tiers)
        except ValueError as error:
            raise ValidationError(f"{error}{self._tiers_hint(model, tiers)}") from error
        version = cleaned.get("version") or (self.instance.version if self.instance.version_id else None)
        if self.is_standalone and version is not None:
            check_version_prices(version.plan.currency, [*self._stored_siblings(version), self.pricing_price])
        return cleaned

    def _tiers_hint(self, model: pricing.PriceModel, tiers: list) -> str:
        if self.is_standalone:
            return ""
        if model in TIERED and not tiers:
            return f" ({model} prices need them: enter one a line in the tiers column, the last one *:amount)"
        if model not in TIERED and tiers:
            return " (clear the tiers column)"
        return ""

    def _save_m2m(self):
        """Write the tiers entered beside the price (also when the admin saves the form with commit=False and
        calls save_m2m later): they replace the stored ones."""
        super()._save_m2m()
        if "tiers" not in self.fields or "tiers" not in self.changed_data:
            return
        self.instance.tiers.all().delete()
        PriceTier.objects.bulk_create(
            PriceTier(
                price=self.instance, up_to=t.up_to, unit_amount=t.unit_amount, flat_amount=t.flat_amount
            )
            for t in self.pricing_price.tiers
        )

    def _stored_siblings(self, version: PlanVersion) -> list[pricing.Price]:
        siblings = []
        for price in version.prices.exclude(pk=self.instance.pk).prefetch_related("tiers"):
            try:
                siblings.append(stored_pricing_price(price))
            except ValueError:
                continue  # a stored price the engine refuses is reported on its own page, not this one
        return siblings


class StandalonePriceForm(PriceForm):
    tiers = None  # the price's own page edits them in the tier formset
    is_standalone = True


class RowsCheckedTogether(BaseInlineFormSet):
    """Inline rows that the engine must accept together: once every row is valid on its own, the objects the
    rows built (``row_attribute`` of each form that stays) go to ``check_together``."""

    row_attribute = ""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        self.check_together(
            [
                getattr(form, self.row_attribute)
                for form in self.forms
                if hasattr(form, self.row_attribute) and not self._should_delete_form(form)
            ]
        )

    def check_together(self, rows: list) -> None:
        raise NotImplementedError


class PriceFormSet(RowsCheckedTogether):
    """A version's prices together must form one plan the engine accepts."""

    row_attribute = "pricing_price"

    def check_together(self, rows: list[pricing.Price]) -> None:
        currency = self.instance.plan.currency if self.instance.plan_id else "USD"
        check_version_prices(currency, rows)


class PriceInline(EnteredDecimalsMixin, LockedVersionInlineMixin, admin.TabularInline):
    model = Price
    form = PriceForm
    formset = PriceFormSet
    fields = [*PRICE_FIELDS[:4], "tiers", *PRICE_FIELDS[4:]]
    extra = 0
    show_change_link = True

    class Media:
        css = {"all": ["billing/inline-tables.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("version__plan").prefetch_related("tiers")

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "meter":  # the catalogue is not edited from a price row: no add/change icons
            formfield.widget.can_add_related = formfield.widget.can_change_related = False
            formfield.widget.can_delete_related = formfield.widget.can_view_related = False
        return formfield

    @admin.display(description="tiers")
    def tiers(self, price: Price) -> str:
        """The column of a locked version, which shows the tiers rather than an input."""
        return tiers_text(price.tiers.all()).replace("\n", "; ") or "—"


class PriceTierForm(forms.ModelForm):
    class Meta:
        model = PriceTier
        fields = ["up_to", "unit_amount", "flat_amount"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            show_amounts_in(self, self.instance.price.version.plan.currency)

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                self.tier = pricing.Tier(cleaned.get("up_to"), cleaned["unit_amount"], cleaned["flat_amount"])
            except ValueError as error:
                raise ValidationError(str(error)) from error
        return cleaned


class PriceTierFormSet(RowsCheckedTogether):
    """The tiers of one price, checked together with its price model as the engine will read them."""

    row_attribute = "tier"

    def check_together(self, rows: list[pricing.Tier]) -> None:
        # The engine reads tiers in the model's order: by bound, the unbounded one last.
        rows.sort(key=lambda t: (t.up_to is None, t.up_to or 0))
        price = self.instance
        if price.price_model not in set(pricing.PriceModel):
            return  # the price's own form reports it
        try:
            pricing.Price(meter=price.meter_id or "", price_model=price.price_model, tiers=tuple(rows))
        except ValueError as error:
            raise ValidationError(str(error)) from error


class PriceTierInline(EnteredDecimalsMixin, LockedVersionInlineMixin, admin.TabularInline):
    model = PriceTier
    form = PriceTierForm
    formset = PriceTierFormSet
    fields = PriceTierForm.Meta.fields
    extra = 0


@admin.register(Price)
class PriceAdmin(PlanPartAdmin):
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
