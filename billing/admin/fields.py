"""How decimals and tiers read in the billing admin.

Rates are stored with 12 decimal places, quantities with 6 and amounts with 4, so Django would show a rate
entered as ``0.30`` as ``0.300000000000`` and a zero as ``0E-12``. Here inputs and read-only values show the
digits that were entered (``billing.money.plain_decimal``), amounts to the currency's minor unit. Tiers are
entered as text lines beside their price, so a tiered price is added on its version's page in one save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import cache

from django import forms
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models

from billing import audit, pricing
from billing.models import MONEY, RATE, PriceTier
from billing.money import (
    format_money_with_code,
    format_quantity,
    format_unit_price_with_code,
    plain_decimal,
)

UNBOUNDED = ("", "*", "inf", "∞")
TIERS_HELP = (
    "One tier a line, up_to:unit_amount or up_to:unit_amount:flat_amount, in order; the last one unbounded: "
    "*:unit_amount. Unit amounts are per the unit size. Graduated and volume prices only."
)


def is_money(field: models.Field) -> bool:
    return isinstance(field, models.DecimalField) and field.decimal_places == MONEY["decimal_places"]


def is_rate(field: models.Field) -> bool:
    return isinstance(field, models.DecimalField) and field.decimal_places == RATE["decimal_places"]


def _exponent(currency: str) -> int:
    try:
        return pricing.currency_exponent(currency)
    except ValueError:
        return 2


class DecimalInput(forms.NumberInput):
    """A stored decimal as it was entered (``0.3``, ``0``); ``min_places`` pads amounts to the minor unit."""

    min_places = 0

    def format_value(self, value):
        if isinstance(value, Decimal) and value.is_finite():
            return plain_decimal(value, self.min_places)
        return super().format_value(value)


class EnteredDecimalsMixin:
    """For model admins and inlines: decimal inputs show what was entered."""

    formfield_overrides = {models.DecimalField: {"widget": DecimalInput}}


def show_amounts_in(form: forms.ModelForm, currency: str | None) -> None:
    """Pad the form's money inputs to the currency's minor unit (``49.00``, ``500`` for JPY)."""
    if not currency:
        return
    for name, field in form.fields.items():
        try:
            model_field = form._meta.model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if isinstance(field.widget, DecimalInput) and is_money(model_field):
            field.widget.min_places = _exponent(currency)


@cache
def entered_value(model: type[models.Model], name: str) -> Callable[[models.Model], str]:
    """A read-only column showing a decimal field as entered: amounts and rates with the plan's currency,
    quantities with thousands separators. (Locked versions are read only, and Django would show the
    stored places.) Cached, so each page asks for the same column object."""
    field = model._meta.get_field(name)

    def display(obj: models.Model) -> str:
        value = getattr(obj, name)
        if value is None:
            return "∞" if name == "up_to" else "—"
        currency = audit.plan_of(obj).currency
        if is_money(field):
            return format_money_with_code(value, currency)
        if is_rate(field):
            return format_unit_price_with_code(value, Decimal(1), currency)
        return format_quantity(value)

    display.short_description = field.verbose_name
    display.__name__ = name  # the column's CSS class, as for the input it replaces
    return display


def read_only_fieldsets(model: type[models.Model], fieldsets: Iterable) -> list:
    """The fieldsets with each decimal field replaced by its ``entered_value`` column."""

    def column(name):
        if isinstance(name, str):
            try:
                if isinstance(model._meta.get_field(name), models.DecimalField):
                    return entered_value(model, name)
            except FieldDoesNotExist:
                pass
        return name

    return [
        (title, {**options, "fields": [column(name) for name in options["fields"]]})
        for title, options in fieldsets
    ]


def _tier_number(text: str, name: str, position: int) -> Decimal:
    try:
        return PriceTier._meta.get_field(name).formfield().clean(text)
    except ValidationError as error:
        raise ValidationError(f"Tier {position}, {name}: {' '.join(error.messages)}") from error


def parse_tiers(text: str) -> list[pricing.Tier]:
    """``500:0.10`` lines (``up_to:unit_amount[:flat_amount]``, ``*`` for no bound) as the engine's tiers,
    ordered by bound with the unbounded one last, as the tier formset orders them. Each number is checked as
    its column stores it (digits and places), each tier by ``pricing.Tier``."""
    tiers = []
    lines = [line.strip() for line in text.replace(";", "\n").splitlines()]
    for position, line in enumerate((line for line in lines if line), start=1):
        parts = [part.strip() for part in line.split(":")]
        if len(parts) not in (2, 3):
            raise ValidationError(
                f"Tier {position} ({line}): write up_to:unit_amount or up_to:unit_amount:flat_amount."
            )
        up_to = None if parts[0].lower() in UNBOUNDED else _tier_number(parts[0], "up_to", position)
        unit_amount = _tier_number(parts[1], "unit_amount", position)
        flat_amount = _tier_number(parts[2], "flat_amount", position) if len(parts) == 3 else Decimal(0)
        try:
            tiers.append(pricing.Tier(up_to, unit_amount, flat_amount))
        except ValueError as error:
            raise ValidationError(f"Tier {position} ({line}): {error}.") from error
    return sorted(tiers, key=lambda t: (t.up_to is None, t.up_to or 0))


def tiers_text(tiers: Iterable[pricing.Tier | PriceTier]) -> str:
    """The tiers as ``parse_tiers`` reads them, one a line."""
    return "\n".join(
        ":".join(
            [
                "*" if t.up_to is None else plain_decimal(t.up_to),
                plain_decimal(t.unit_amount),
                *([plain_decimal(t.flat_amount)] if t.flat_amount else []),
            ]
        )
        for t in tiers
    )


class TiersField(forms.CharField):
    """A price's tiers as text lines; cleaned to the same text written the one way (``tiers_text``)."""

    widget = forms.Textarea(attrs={"rows": 2, "cols": 16, "class": "tiers"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", TIERS_HELP)
        super().__init__(strip=True, **kwargs)

    def clean(self, value):
        return tiers_text(parse_tiers(super().clean(value) or ""))

    def has_changed(self, initial, data):
        try:
            return tiers_text(parse_tiers(initial or "")) != tiers_text(parse_tiers(data or ""))
        except ValidationError:
            return True
