"""Stripe Tax as the double models it, one rule for Tax Calculations and for invoices with automatic tax, so an
invoice whose items are a calculation's line items is taxed exactly as the calculation was.

* Where: the customer's address. Stripe needs a country, a 5-digit postal code in the US and a province or postal
  code in Canada (docs.stripe.com/tax/invoicing, "Set up the customer"); without them a calculation is refused
  with ``customer_tax_location_invalid`` and an invoice's ``automatic_tax.status`` is
  ``requires_location_inputs`` (it cannot be finalized).
* How much: per line item, rounded half up to the minor unit on each line, as the calculation's line items
  carry their own ``amount_tax``: exclusive lines add ``amount × rate``; inclusive lines contain
  ``amount − amount ÷ (1 + rate)``. The rate is the one the test configured for the country
  (``StripeDouble.tax_rates``); a country without one is not collected (0, ``not_collecting``), and the
  non-taxable tax code ``txcd_00000000`` is 0 (``product_exempt``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .errors import StripeError

NONTAXABLE = "txcd_00000000"
TAX_TYPES = {"US": "sales_tax", "CA": "gst", "AU": "gst", "NZ": "gst", "IN": "gst", "JP": "jct"}


@dataclass(frozen=True)
class TaxedLine:
    amount: int
    behavior: str  # exclusive | inclusive
    tax_code: str | None


def unlocated(address: dict[str, Any] | None) -> str | None:
    """Why Stripe Tax cannot place this address, or None when it can."""
    address = address or {}
    country = (address.get("country") or "").upper()
    if not re.fullmatch(r"[A-Z]{2}", country):
        return "a country (ISO 3166-1 alpha-2) is needed"
    if country == "US" and not re.fullmatch(r"\d{5}(-\d{4})?", address.get("postal_code") or ""):
        return "customers in the US need a 5-digit postal code"
    if country == "CA" and not (address.get("state") or address.get("postal_code")):
        return "customers in Canada need a province or postal code"
    return None


def location_error(address: dict[str, Any] | None, param: str) -> StripeError:
    return StripeError(
        400,
        f"Unable to determine the customer's tax location: {unlocated(address)}.",
        code="customer_tax_location_invalid",
        param=param,
    )


def line_tax(line: TaxedLine, percent: Decimal | None) -> int:
    if percent is None or line.tax_code == NONTAXABLE or line.amount == 0:
        return 0
    if line.behavior == "inclusive":
        return line.amount - _round_half_up(Decimal(line.amount) / (1 + percent / 100))
    return _round_half_up(Decimal(line.amount) * percent / 100)


def breakdown(
    lines: list[TaxedLine], taxes: list[int], address: dict[str, Any], percent: Decimal | None
) -> list[dict[str, Any]]:
    """Stripe's ``tax_breakdown``: one entry per tax behavior taxed at the country's rate, and one for what was
    not taxed (exempt code, or a country where the account does not collect)."""
    country = (address.get("country") or "").upper()
    details = {
        "country": country,
        "state": address.get("state") or None,
        "tax_type": TAX_TYPES.get(country, "vat"),
        "flat_amount": None,
        "rate_type": "percentage",
    }
    entries = []
    for behavior in ("exclusive", "inclusive"):
        taxed = [
            (line, tax)
            for line, tax in zip(lines, taxes, strict=True)
            if line.behavior == behavior and percent is not None and line.tax_code != NONTAXABLE
        ]
        if taxed:
            entries.append(
                {
                    "amount": sum(tax for _, tax in taxed),
                    "inclusive": behavior == "inclusive",
                    "tax_rate_details": {**details, "percentage_decimal": _percent_text(percent)},
                    "taxability_reason": "standard_rated",
                    "taxable_amount": sum(
                        line.amount - (tax if behavior == "inclusive" else 0) for line, tax in taxed
                    ),
                }
            )
    if percent is None or any(line.tax_code == NONTAXABLE for line in lines):
        entries.append(
            {
                "amount": 0,
                "inclusive": False,
                "tax_rate_details": {**details, "percentage_decimal": "0.0"},
                "taxability_reason": "not_collecting" if percent is None else "product_exempt",
                "taxable_amount": 0,
            }
        )
    return entries


def tax_rate_id(country: str) -> str:
    """The id of the (archived) tax rate Stripe Tax reports a line taxed under: one per country in the double."""
    return f"txr_double_{country.lower()}"


def _percent_text(percent: Decimal) -> str:
    text = format(percent, "f")
    return text if "." in text else f"{text}.0"


def _round_half_up(number: Decimal) -> int:
    return int(number.quantize(Decimal(1), rounding=ROUND_HALF_UP))
