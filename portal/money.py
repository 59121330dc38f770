"""Numbers as tenants read them: money in the tenant's currency with its minor unit, quantities with units."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from billing.pricing import currency_exponent

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


def format_money(amount: Decimal | None, currency: str, *, precise: bool = False) -> str:
    """``$1,234.56``; ``precise`` keeps up to 6 decimals for unit prices (``$0.0000003``)."""
    if amount is None:
        return "—"
    amount = Decimal(amount)
    if precise:
        text = f"{amount.normalize():,f}" if amount else "0"
    else:
        exponent = currency_exponent(currency)
        quantum = Decimal(1).scaleb(-exponent)
        text = f"{amount.quantize(quantum, rounding=ROUND_HALF_UP):,}"
    sign = "-" if text.startswith("-") else ""
    return f"{sign}{SYMBOLS.get(currency, currency + ' ')}{text.lstrip('-')}"


def format_quantity(quantity: Decimal | None) -> str:
    if quantity is None:
        return "—"
    quantity = Decimal(quantity).normalize()
    if quantity == quantity.to_integral_value():
        return f"{int(quantity):,}"
    return f"{quantity:,f}"
