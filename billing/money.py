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


CALL_COST_EXTRA_PLACES = 2  # a call's cost shows hundredths of a cent ($0.0549): decision 017


def format_call_cost(amount: Decimal | int | str | None, currency: str) -> str:
    """A per-call cost for tenants: two places past the minor unit (``$0.0549``, ``$0.0004``), so a short call
    never reads as free; the full-precision amount is in the API's ``cost_precise`` and on hover."""
    if amount is None:
        return NO_VALUE
    text = f"{_to_minor_unit(amount, _staff_exponent(currency) + CALL_COST_EXTRA_PLACES):,}"
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


# Unit sizes people say with a letter: "per 1M tokens".
_SIZE_WORDS = {Decimal(1000): "1K", Decimal(1_000_000): "1M", Decimal(1_000_000_000): "1B"}
_SECONDS = {Decimal(1): "second", Decimal(60): "minute", Decimal(3600): "hour"}
UNIT_PRICE_DIGITS = 6  # significant digits of a unit price; averages of tiered prices have dozens


def format_per_unit(unit_size: Decimal | int, unit: str) -> str:
    """``per minute``, ``per 90 s``, ``per 1M tokens``, ``per agent``; ``per 1,000`` for a unit not known, and
    "" for one of those."""
    size = Decimal(unit_size).normalize()
    if unit == "second":
        return f"per {_SECONDS[size]}" if size in _SECONDS else f"per {format_quantity(size)} s"
    if not unit:
        return "" if size == 1 else f"per {format_quantity(size)}"
    if size == 1:
        return f"per {unit}"
    return f"per {_SIZE_WORDS.get(size) or format_quantity(size)} {unit}s"


def format_unit_price(
    amount: Decimal | int | str | None, unit_size: Decimal | int, unit: str, currency: str
) -> str:
    """For tenants: ``$0.012 per minute``, ``$0.30 per 1M tokens``, ``$49.00 per month``; a price of zero
    reads ``included``. ``unit`` is the meter's (``second``, ``token``, ``character``) or a fee's (``month``,
    ``agent``). The amount keeps the digits it was entered with (at least the currency's minor unit), and an
    average of tiers is rounded to a few significant digits, marked ``≈``."""
    if amount is None:
        return NO_VALUE
    value = Decimal(amount).normalize()
    if not value:
        return "included"
    approximate = ""
    if len(value.as_tuple().digits) > UNIT_PRICE_DIGITS:
        places = UNIT_PRICE_DIGITS - value.adjusted() - 1
        value, approximate = (
            value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP).normalize(),
            "≈ ",
        )
    exponent = _staff_exponent(currency)
    if value.as_tuple().exponent > -exponent:
        value = _to_minor_unit(value, exponent)  # only adds zeros: $0.3 reads $0.30
    sign = "-" if value < 0 else ""
    text = f"{approximate}{sign}{SYMBOLS.get(currency, currency + ' ')}{abs(value):,f}"
    per = format_per_unit(unit_size, unit)
    return f"{text} {per}" if per else text
