"""Tax computed by an outside service (Stripe Tax) instead of staff-defined rates, when the operator turns it on
(``STRIPE_TAX_ENABLED``; decision 019).

Prepaid credit is applied after tax (billing.settlement's order of operations), so the tax must be known before
our invoice is finalized: finalization asks the calculator for the tax of the invoice's taxable lines and writes
its answer as the tax line. Billing cannot import payments (the layers), so payments registers the calculator
here from its ``AppConfig.ready`` (:func:`register`).

What is taxed: every line but tax and prepaid credit, with discounts and negative lines (corrections of earlier
periods) spread over the positive lines in proportion (:func:`taxable_lines`). The service sees only those
positive amounts, in minor units; the Stripe sync sends the same amounts as the Stripe invoice's items, so Stripe
taxes its invoice exactly as it taxed the calculation (payments.stripe_sync).

Drafts and the prepaid balance never call the service: they estimate with the effective rate the last
calculation returned for the tenant (``BillingProfile.stripe_tax_percent``); a tenant with none yet gets a tax
line of zero that says the tax is computed at finalization (billing.taxes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from django.conf import settings

from billing import pricing
from billing.models import BillingProfile, Invoice, InvoiceLine

# Lines that are not sales: the tax itself (and an earlier period's change of it), and prepaid credit, a payment.
NOT_TAXED = {InvoiceLine.Kind.TAX, InvoiceLine.Kind.CREDITS_APPLIED}
STRIPE_TAX_CODE = "stripe-tax"  # InvoiceLine.code of a tax line whose amount the service computed


class TaxCalculationError(ValueError):
    """The service could not compute the tax: the invoice stays a draft and the message is kept on it
    (``Invoice.finalization_error``) for staff."""


class TaxServiceUnavailable(TaxCalculationError):
    """Unreachable, rate-limited or failing on its side: finalization is retried (billing.tasks)."""


@dataclass(frozen=True)
class TaxableLine:
    reference: str  # the line's position on the invoice
    amount_minor: int  # > 0


@dataclass(frozen=True)
class TaxRequest:
    invoice_id: int
    currency: str
    address: dict[str, str]  # line1, line2, city, postal_code, state, country
    lines: tuple[TaxableLine, ...]


@dataclass(frozen=True)
class TaxPortion:
    """One rate of one jurisdiction, as the service reported it (the PDF's breakdown per rate)."""

    name: str
    percent: Decimal
    taxable: Decimal
    tax: Decimal


@dataclass(frozen=True)
class TaxQuote:
    calculation_id: str
    tax: Decimal  # added to the invoice (exclusive)
    portions: tuple[TaxPortion, ...]


Calculator = Callable[[TaxRequest], TaxQuote]
_calculator: Calculator | None = None


def register(calculator: Calculator) -> None:
    """Called once from an ``AppConfig.ready`` (payments: Stripe Tax)."""
    global _calculator
    _calculator = calculator


def is_enabled() -> bool:
    return bool(getattr(settings, "STRIPE_TAX_ENABLED", False))


def address_of(profile: BillingProfile) -> dict[str, str]:
    """The billing profile's address as Stripe names its parts."""
    return {
        "line1": profile.address_line1,
        "line2": profile.address_line2,
        "city": profile.city,
        "postal_code": profile.postal_code,
        "state": profile.region,
        "country": profile.country.upper(),
    }


def taxable_lines(lines: list[InvoiceLine], currency: str) -> list[tuple[InvoiceLine, Decimal]]:
    """Each line that is a sale, with the amount taxed on it: the positive lines share what all of them come to
    (discounts and negative lines included, never below zero) in proportion to their amounts, by largest
    remainder in whole minor units so the shares add up to exactly that; the other lines carry 0."""
    sales = [
        line for line in lines if line.kind not in NOT_TAXED and line.adjusts_kind != InvoiceLine.Kind.TAX
    ]
    positive = sum((line.amount for line in sales if line.amount > 0), Decimal(0))
    net = max(sum((line.amount for line in sales), Decimal(0)), Decimal(0))
    if positive <= 0:
        return [(line, Decimal(0)) for line in sales]
    unit = Decimal(1).scaleb(-pricing.currency_exponent(currency))
    exact = [net * line.amount / positive if line.amount > 0 else Decimal(0) for line in sales]
    shares = [value.quantize(unit, rounding=ROUND_DOWN) for value in exact]
    left = int((net - sum(shares, Decimal(0))) / unit)
    # the units rounding down left over go to the largest remainders (the earlier line first among equals)
    by_remainder = sorted(
        (i for i, line in enumerate(sales) if line.amount > 0), key=lambda i: (shares[i] - exact[i], i)
    )
    for i in by_remainder[:left]:
        shares[i] += unit
    return list(zip(sales, shares, strict=True))


def request_for(invoice: Invoice, profile: BillingProfile | None) -> TaxRequest | None:
    """What to ask the service for the invoice's tax; None when nothing on it is taxable."""
    lines = list(invoice.scoped("lines").order_by("position"))
    taxed = [
        TaxableLine(str(line.position), pricing.to_minor_units(share, invoice.currency))
        for line, share in taxable_lines(lines, invoice.currency)
        if share > 0
    ]
    if not taxed:
        return None
    if profile is None:
        raise TaxCalculationError(
            "the tenant has no billing profile: Stripe Tax needs the customer's address to tax the invoice"
        )
    return TaxRequest(invoice.pk, invoice.currency, address_of(profile), tuple(taxed))


def calculate(request: TaxRequest) -> TaxQuote:
    if _calculator is None:
        raise TaxCalculationError("STRIPE_TAX_ENABLED is set but no tax calculator is registered")
    return _calculator(request)
