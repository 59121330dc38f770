"""Stripe Tax as billing's tax calculator (billing.tax_calculation, decision 019): one Tax Calculation
(``POST /v1/tax/calculations``) per finalization, registered with billing in ``PaymentsConfig.ready``.

The request carries the customer's address from the billing profile and one line item per taxable line (its
position as ``reference``, its taxable amount in minor units, exclusive of tax, under ``STRIPE_TAX_CODE``). Its
idempotency key is the invoice's id and a digest of the request: a retried finalization of the same draft
replays the same calculation, a draft that changed in between gets a new one.

Errors: unreachable, rate-limited or failing on Stripe's side (the sync's transient errors) become
``TaxServiceUnavailable``, which finalization retries; an address Stripe Tax cannot locate
(``customer_tax_location_invalid``) and any other refusal become ``TaxCalculationError`` with Stripe's message,
shown to staff on the draft.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

import stripe
from django.conf import settings

from billing.pricing import currency_exponent
from billing.tax_calculation import (
    TaxCalculationError,
    TaxPortion,
    TaxQuote,
    TaxRequest,
    TaxServiceUnavailable,
)
from payments.stripe_sync import TRANSIENT_ERRORS, client, describe, is_configured, key_options

UNLOCATED = "customer_tax_location_invalid"
ACRONYMS = {
    "vat": "VAT",
    "gst": "GST",
    "hst": "HST",
    "pst": "PST",
    "qst": "QST",
    "igst": "IGST",
    "jct": "JCT",
}


def calculate(request: TaxRequest) -> TaxQuote:
    if not is_configured():
        raise TaxCalculationError("Stripe Tax is on (STRIPE_TAX_ENABLED) but STRIPE_API_KEY is not set")
    params = _params(request)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    try:
        calculation = client().v1.tax.calculations.create(
            params, key_options("tax-calculation", request.invoice_id, digest)
        )
    except TRANSIENT_ERRORS as error:
        raise TaxServiceUnavailable(f"Stripe Tax did not answer: {describe(error)} (will retry)") from error
    except stripe.StripeError as error:
        if getattr(error, "code", None) == UNLOCATED:
            raise TaxCalculationError(
                f"Stripe Tax cannot locate the customer's address {_address_text(request.address)}; correct the "
                f"tenant's billing profile ({describe(error)})"
            ) from error
        raise TaxCalculationError(f"Stripe Tax refused the calculation: {describe(error)}") from error
    return _quote(calculation, request.currency)


def _params(request: TaxRequest) -> dict:
    return {
        "currency": request.currency.lower(),
        "customer_details": {
            "address": {key: value for key, value in request.address.items() if value},
            "address_source": "billing",
        },
        "line_items": [
            {
                "amount": line.amount_minor,
                "reference": line.reference,
                "tax_behavior": "exclusive",
                "tax_code": settings.STRIPE_TAX_CODE,
            }
            for line in request.lines
        ],
    }


def _quote(calculation: stripe.tax.Calculation, currency: str) -> TaxQuote:
    exponent = currency_exponent(currency)

    def major(minor: int) -> Decimal:
        return Decimal(minor).scaleb(-exponent)

    portions = tuple(
        TaxPortion(
            name=_portion_name(row.tax_rate_details),
            percent=Decimal(row.tax_rate_details.percentage_decimal),
            taxable=major(row.taxable_amount),
            tax=major(row.amount),
        )
        for row in calculation.tax_breakdown
        if row.amount or row.taxable_amount
    )
    return TaxQuote(calculation.id, major(calculation.tax_amount_exclusive), portions)


def _portion_name(details: stripe.StripeObject) -> str:
    """``VAT (DE)``, ``Sales tax (US-CA)``: the tax type and where it is due."""
    kind = str(details.tax_type or "tax")
    name = ACRONYMS.get(kind) or kind.replace("_", " ").capitalize()
    place = "-".join(part for part in (details.country, details.state) if part)
    return f"{name} ({place})" if place else name


def _address_text(address: dict[str, str]) -> str:
    return ", ".join(value for value in address.values() if value) or "(empty)"
