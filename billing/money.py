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
    return plain_decimal(quantity, grouped=True)


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


def format_unit_price_with_code(
    amount: Decimal | int | str | None, unit_size: Decimal, currency: str, *, is_average: bool = False
) -> str:
    """For staff: ``0.30 USD per 1,000,000``: a rate with the digits it was entered with (the stored
    trailing zeros stripped), at least the currency's minor unit; ``per …`` only when the unit size is not 1.

    ``is_average`` marks a rate the engine computed (a tiered line's charge over its quantity), which has no
    entered precision: it is rounded half-up to four significant digits (shown to at least the minor unit):
    ``0.06569 USD per 1,000 (average)``.
    """
    if amount is None:
        return NO_VALUE
    value, exponent = Decimal(amount), _staff_exponent(currency)
    if is_average and value:
        places = max(exponent, 3 - value.adjusted())
        value = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    per = f" per {format_quantity(unit_size)}" if unit_size != 1 else ""
    average = " (average)" if is_average else ""
    return f"{plain_decimal(value, exponent, grouped=True)} {currency}{per}{average}"


def format_margin_percent(margin: Decimal, total: Decimal) -> str:
    """``25.0 %``: the margin as a share of the total, one decimal, half-up; ``—`` when the total is zero."""
    if not total:
        return NO_VALUE
    return f"{(margin * 100 / total).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} %"


def plain_decimal(value: Decimal | int | str, min_places: int = 0, *, grouped: bool = False) -> str:
    """``0.3``, ``1000000``, ``49.00`` (``min_places=2``): the digits a person entered, without the trailing
    zeros a 12-place column adds and never in scientific notation (``0E-12`` is ``0``), so admin inputs and
    read-only values show what was typed. ``grouped`` adds thousands separators (not for inputs)."""
    value = Decimal(value).normalize()
    if value.as_tuple().exponent > -min_places:
        value = value.quantize(Decimal(1).scaleb(-min_places))  # only adds zeros: it has fewer places
    return f"{value:,f}" if grouped else f"{value:f}"
