"""Amounts and quantities as people read them, never through a float.

Two audiences read the same numbers. Tenants (the portal and its invoice PDFs) read money with the
currency's symbol, ``$1,234.56``; platform staff (the admin) read it with the ISO code after it,
``1,234.56 USD``, so no two currencies look alike in a list. Both round half-up to the currency's minor unit,
as invoice lines do (``billing.pricing.round_money``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from billing.pricing import currency_exponent

NO_VALUE = "—"

SYMBOLS = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "CHF": "CHF ",
    "CAD": "CA$",
    "AUD": "A$",
    "SEK": "SEK ",
    "KRW": "₩",
}


def _to_minor_unit(amount: Decimal | int | str, exponent: int) -> Decimal:
    return Decimal(amount).quantize(Decimal(1).scaleb(-exponent), rounding=ROUND_HALF_UP)


def _staff_exponent(currency: str) -> int:
    # The admin shows whatever a row holds, even a code the pricing engine refuses, rather than fail the page.
    try:
        return currency_exponent(currency)
    except ValueError:
        return 2


def format_quantity(quantity: Decimal | int | None) -> str:
    """``1,000,000`` or ``1,234.5678``: every significant digit, no trailing zeros."""
    if quantity is None:
        return NO_VALUE
    quantity = Decimal(quantity).normalize()
    if quantity == quantity.to_integral_value():
        return f"{int(quantity):,}"
    return f"{quantity:,f}"


def format_money(amount: Decimal | int | str | None, currency: str, *, precise: bool = False) -> str:
    """For tenants: ``$1,234.56``; ``precise`` keeps every digit for unit prices (``$0.0000003``).

    Raises ValueError for a currency that is not an ISO 4217 code (unless ``precise``).
    """
    if amount is None:
        return NO_VALUE
    amount = Decimal(amount)
    if precise:
        text = f"{amount.normalize():,f}" if amount else "0"
    else:
        text = f"{_to_minor_unit(amount, currency_exponent(currency)):,}"
    sign = "-" if text.startswith("-") else ""
    return f"{sign}{SYMBOLS.get(currency, currency + ' ')}{text.lstrip('-')}"


def format_money_with_code(amount: Decimal | int | str | None, currency: str) -> str:
    """For staff: ``1,234.56 USD``, rounded to the currency's minor unit (two places for an unknown code)."""
    if amount is None:
        return NO_VALUE
    return f"{_to_minor_unit(amount, _staff_exponent(currency)):,} {currency}"


def format_unit_price_with_code(amount: Decimal | int | str | None, unit_size: Decimal, currency: str) -> str:
    """For staff: ``0.30 USD per 1,000,000``: the full precision of a rate, at least the currency's minor
    unit; ``per …`` only when the unit size is not 1."""
    if amount is None:
        return NO_VALUE
    exponent = _staff_exponent(currency)
    value = Decimal(amount).normalize()
    if value.as_tuple().exponent > -exponent:
        value = _to_minor_unit(value, exponent)  # only adds zeros: the value has fewer places than that
    per = f" per {format_quantity(unit_size)}" if unit_size != 1 else ""
    return f"{value:,f} {currency}{per}"


def format_margin_percent(margin: Decimal, total: Decimal) -> str:
    """``25.0 %``: the margin as a share of the total, one decimal, half-up; ``—`` when the total is zero."""
    if not total:
        return NO_VALUE
    return f"{(margin * 100 / total).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} %"
