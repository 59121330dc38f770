"""The double's Stripe Tax, through the real SDK over HTTP: Tax Calculations answer with Stripe's example object
filled in from the request at the rate the test set for the country, and an invoice with automatic tax whose items
are a calculation's line items is taxed exactly as the calculation was."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
import stripe

from .objects import example
from .server import StripeDouble

ADDRESS = {"line1": "Hauptstr. 1", "postal_code": "10115", "city": "Berlin", "country": "DE"}


@pytest.fixture
def client(stripe_double: StripeDouble) -> stripe.StripeClient:
    stripe_double.set_tax_rate("DE", "19")
    return stripe.StripeClient("sk_test_x", base_addresses={"api": stripe_double.url})


def taxed(amount: int, percent: str) -> int:
    return int((Decimal(amount) * Decimal(percent) / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def calculate(
    client: stripe.StripeClient, amounts: list[int], address=ADDRESS, **line
) -> stripe.tax.Calculation:
    return client.v1.tax.calculations.create(
        {
            "currency": "usd",
            "customer_details": {"address": address, "address_source": "billing"},
            "line_items": [
                {"amount": amount, "reference": str(n), "tax_behavior": "exclusive", **line}
                for n, amount in enumerate(amounts)
            ],
        }
    )


def test_a_calculation_taxes_each_line_at_the_country_rate_in_stripes_shape(client):
    amounts = [4165, 331, 1049]  # 19 % of each: 791.35, 62.89, 199.31
    calculation = calculate(client, amounts, tax_code="txcd_10103001")

    expected = [taxed(a, "19") for a in amounts]
    assert expected == [791, 63, 199]
    assert calculation.tax_amount_exclusive == sum(expected) and calculation.tax_amount_inclusive == 0
    assert calculation.amount_total == sum(amounts) + sum(expected)
    (row,) = calculation.tax_breakdown
    assert (row.amount, row.taxable_amount, row.inclusive) == (sum(expected), sum(amounts), False)
    assert (row.tax_rate_details.country, row.tax_rate_details.percentage_decimal) == ("DE", "19.0")
    assert calculation.id.startswith("taxcalc_")
    assert set(calculation.to_dict()) == set(example("tax.calculation"))  # Stripe's fields, no others


def test_a_country_without_a_rate_is_not_collected_and_the_exempt_code_is_not_taxed(client):
    french = calculate(client, [1000], {**ADDRESS, "country": "FR"})
    assert french.tax_amount_exclusive == 0
    assert [r.taxability_reason for r in french.tax_breakdown] == ["not_collecting"]
    exempt = calculate(client, [1000], tax_code="txcd_00000000")
    assert exempt.tax_amount_exclusive == 0


def test_an_address_stripe_tax_cannot_locate_is_refused(client):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        calculate(client, [1000], {"country": "US", "state": "CA"})  # the US needs a 5-digit postal code
    assert raised.value.code == "customer_tax_location_invalid"
    assert raised.value.param == "customer_details[address]"


def test_negative_amounts_and_repeated_references_are_refused(client):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        calculate(client, [1000, -5])
    assert raised.value.param == "line_items[1][amount]"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.tax.calculations.create(
            {
                "currency": "usd",
                "customer_details": {"address": ADDRESS, "address_source": "billing"},
                "line_items": [{"amount": 1, "reference": "a"}, {"amount": 2, "reference": "a"}],
            }
        )
    assert raised.value.param == "line_items[1][reference]"


def test_automatic_tax_on_an_invoice_with_the_calculations_items_equals_the_calculation(client):
    amounts = [4165, 331, 1049]
    calculation = calculate(client, amounts, tax_code="txcd_10103001")
    customer = client.v1.customers.create({"address": ADDRESS})
    invoice = client.v1.invoices.create(
        {
            "customer": customer.id,
            "currency": "usd",
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "automatic_tax": {"enabled": True},
        }
    )
    for amount in amounts:
        client.v1.invoice_items.create(
            {
                "customer": customer.id,
                "invoice": invoice.id,
                "amount": amount,
                "tax_behavior": "exclusive",
                "tax_code": "txcd_10103001",
            }
        )
    client.v1.invoice_items.create(  # prepaid credit: not taxed
        {"customer": customer.id, "invoice": invoice.id, "amount": -500, "tax_behavior": "exclusive",
         "tax_code": "txcd_00000000"}
    )  # fmt: skip

    draft = client.v1.invoices.retrieve(invoice.id)
    assert draft.automatic_tax.enabled and draft.automatic_tax.status == "complete"
    assert sum(row.amount for row in draft.total_taxes) == calculation.tax_amount_exclusive
    assert draft.total == sum(amounts) - 500 + calculation.tax_amount_exclusive
    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.total == draft.total and finalized.amount_due == draft.total


def test_automatic_tax_refuses_what_it_cannot_tax(client):
    customer = client.v1.customers.create({})  # no address
    params = {"customer": customer.id, "currency": "usd", "automatic_tax": {"enabled": True}}
    invoice = client.v1.invoices.create(params)
    client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": invoice.id, "amount": 100, "tax_behavior": "exclusive"}
    )
    assert client.v1.invoices.retrieve(invoice.id).automatic_tax.status == "requires_location_inputs"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoices.finalize_invoice(invoice.id)
    assert raised.value.code == "customer_tax_location_invalid"
    with pytest.raises(stripe.InvalidRequestError) as raised:  # not modelled: Stripe Tax on negative sales
        client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id, "amount": -100})
    assert raised.value.code == "parameter_not_modelled"
