"""Taxes (issue 16 part 4, decision 019): a tenant's billing profile and staff-defined rates; tax on the
discounted amount, once; inclusive and reverse-charged invoices; tax ids checked with python-stdnum; the
invoice, its PDF and Stripe's copy agree to the cent. A $49 base fee plan; amounts worked out here."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from billing import credits, invoicing
from billing.models import AppliedCoupon, BillingProfile, Coupon, Invoice, TaxRate
from billing.periods import next_month
from billing.pricing import to_minor_units
from payments import tasks
from spend import control
from tests.billing.builders import make_plan, store, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory
from tests.payments.stripe_world import APRIL, MARCH, SyncState, assert_one_faithful_copy

pytestmark = pytest.mark.django_db
VALID_DE_VAT = "DE136695976"  # python-stdnum's own example of a valid German VAT number
INVALID_DE_VAT = "DE136695977"  # the same with a wrong check digit


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


@pytest.fixture
def seller(settings):
    settings.SELLER_NAME, settings.SELLER_COUNTRY = "Voicey SAS", "FR"
    settings.SELLER_ADDRESS, settings.SELLER_TAX_ID = "1 rue de la Paix; 75002 Paris", "FR40303265045"


def buyer(country: str, tax_id: str = "", **fields) -> Invoice:
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC", billing_email="ap@buyer.test"))
    subscribe(agent.tenant, make_plan(slug=f"p-{agent.tenant.pk}"), starts_on=date(2026, 1, 1))
    BillingProfile.objects.create(
        tenant=agent.tenant,
        legal_name="Buyer GmbH",
        address_line1="Hauptstr. 1",
        postal_code="10115",
        city="Berlin",
        country=country,
        tax_id=tax_id,
        **fields,
    )
    return agent


def rates():
    TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=date(2024, 1, 1))
    TaxRate.objects.create(name="MwSt", country="DE", percent=Decimal(19), effective_from=date(2024, 1, 1))
    TaxRate.objects.create(
        name="GST", country="AU", percent=Decimal(10), inclusive=True, effective_from=date(2024, 1, 1)
    )


def finalize(tenant, period=MARCH) -> Invoice:
    draft = invoicing.generate_invoice(tenant.pk, period)
    return invoicing.finalize_invoice(draft.pk, force=True, now=at(next_month(period)) + timedelta(days=2))


def test_tax_on_the_discounted_amount_before_credit_synced_to_stripe_and_printed(double, seller, client):
    rates()
    agent = buyer("FR", is_business=False)
    tenant = agent.tenant
    AppliedCoupon.objects.create(
        tenant=tenant,
        coupon=Coupon.objects.create(code="q", name="15 % off", percent_off=Decimal(15)),
        starts_on=MARCH,
    )
    store(agent, at(date(2026, 3, 5)), {"llm_input_text_tokens": 7_000_000}, "e1")  # $2.10
    credits.grant(tenant, "10.00", source="promotional", reason="welcome", effective_at=at(MARCH))
    invoice = finalize(tenant)

    subtotal = Decimal("49.00") + Decimal("2.10")
    discount = cents(subtotal * Decimal("0.15"))
    tax = cents((subtotal - discount) * Decimal("0.20"))
    assert [(line.kind, line.amount) for line in invoice.lines.order_by("position")][-3:] == [
        ("discount", -discount),
        ("tax", tax),
        ("credits_applied", Decimal("-10.00")),
    ]
    assert invoice.total == subtotal - discount + tax - 10
    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED
    assert assert_one_faithful_copy(double, invoice)["total"] == to_minor_units(invoice.total, "USD")

    client.force_login(MembershipFactory(tenant=tenant).user)
    page = client.get(f"/invoices/{invoice.pk}/print/").content.decode()
    for text in ("Voicey SAS", "FR40303265045", "Buyer GmbH", "Hauptstr. 1", "TVA 20 %", f"${tax}"):
        assert text in page, text
    pdf = client.get(f"/invoices/{invoice.pk}/pdf/")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    BillingProfile.objects.filter(tenant=tenant).update(legal_name="Renamed SARL")
    assert (
        "Buyer GmbH" in client.get(f"/invoices/{invoice.pk}/print/").content.decode()
    )  # frozen at finalization


def test_an_eu_business_with_a_valid_vat_number_is_reverse_charged(seller):
    rates()
    valid = finalize(buyer("DE", VALID_DE_VAT).tenant)
    (line,) = valid.lines.filter(kind="tax")
    assert line.amount == 0 and "reverse charge" in line.description and "Article 196" in line.description
    assert valid.total == Decimal("49.00")

    invalid = finalize(buyer("DE", INVALID_DE_VAT).tenant)  # not valid: taxed where the buyer is
    assert invalid.lines.get(kind="tax").amount == cents(Decimal(49) * Decimal("0.19"))
    consumer = finalize(buyer("DE", VALID_DE_VAT, is_business=False).tenant)
    assert consumer.lines.get(kind="tax").amount == cents(Decimal(49) * Decimal("0.19"))
    domestic = finalize(buyer("FR", "FR40303265045").tenant)  # the seller's own country: no reverse charge
    assert domestic.lines.get(kind="tax").amount == cents(Decimal(49) * Decimal("0.20"))


def test_an_inclusive_rate_shows_the_tax_it_contains_and_adds_nothing(seller):
    rates()
    invoice = finalize(buyer("AU").tenant)
    (line,) = invoice.lines.filter(kind="tax")
    contained = cents(Decimal(49) - Decimal(49) / Decimal("1.1"))
    assert line.amount == 0 and Decimal(line.price_snapshot["tax"]) == contained
    assert invoice.total == Decimal("49.00")


def test_no_profile_or_no_rate_means_no_tax_line(seller):
    rates()
    bare = AgentFactory(tenant=TenantFactory(timezone="UTC")).tenant
    subscribe(bare, make_plan(slug="bare"), starts_on=date(2026, 1, 1))
    assert not finalize(bare).lines.filter(kind="tax").exists()
    assert not finalize(buyer("JP").tenant).lines.filter(kind="tax").exists()


def test_the_prepaid_balance_counts_tax_as_the_invoice_will(seller):
    rates()
    agent = buyer("FR")
    start, _ = invoicing.current_period(agent.tenant)
    # this month's invoice and last month's, not finalized yet: each its $49 fee and 20 % tax
    assert control.balance(agent.tenant).unbilled_usage == 2 * cents(Decimal(49) * Decimal("1.2"))
    assert invoicing.generate_invoice(agent.tenant.pk, start).total == cents(Decimal(49) * Decimal("1.2"))


def test_late_usage_carries_its_periods_tax_on_the_next_invoice(seller):
    rates()
    agent = buyer("FR")
    finalize(agent.tenant)
    store(agent, at(date(2026, 3, 20)), {"llm_input_text_tokens": 10_000_000}, "late")  # $3.00 in March
    april = finalize(agent.tenant, APRIL)
    adjustments = {line.adjusts_kind: line.amount for line in april.lines.filter(kind="adjustment")}
    assert adjustments == {
        "usage": Decimal("3.00"),
        "tax": cents(Decimal("52.00") * Decimal("0.2")) - Decimal("9.80"),
    }


@pytest.mark.parametrize(
    ("country", "tax_id", "field"),
    [
        ("DE", INVALID_DE_VAT, "tax_id"),
        ("DE", "FR40303265045", "tax_id"),  # another country's number
        ("FR", "FR4030326504", "tax_id"),
        ("Germany", "", "country"),
    ],
)
def test_a_bad_tax_id_or_country_is_refused_in_the_admin_naming_the_field(
    admin_client, country, tax_id, field
):
    tenant = TenantFactory()
    response = admin_client.post(
        "/admin/billing/billingprofile/add/",
        {
            "tenant": tenant.pk,
            "legal_name": "X",
            "address_line1": "a",
            "city": "b",
            "country": country,
            "tax_id": tax_id,
            "is_business": "on",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors.get(field), response.context["adminform"].form.errors
    assert not BillingProfile.objects.filter(tenant=tenant).exists()


def test_a_valid_tax_id_is_stored_compact_and_overlapping_rates_are_refused(admin_client):
    tenant = TenantFactory()
    body = {"tenant": tenant.pk, "legal_name": "X", "address_line1": "a", "city": "b", "country": "de"}
    assert (
        admin_client.post(
            "/admin/billing/billingprofile/add/", {**body, "tax_id": "DE 136 695 976"}
        ).status_code
        == 302
    )
    assert BillingProfile.objects.get(tenant=tenant).tax_id == VALID_DE_VAT
    rates()
    overlap = admin_client.post(
        "/admin/billing/taxrate/add/",
        {"name": "TVA", "country": "FR", "region": "", "percent": "5.5", "effective_from": "2026-01-01"},
    )
    assert overlap.status_code == 200 and "in force then" in overlap.content.decode()


def test_a_manager_keeps_the_billing_profile_in_the_portal_and_the_draft_is_taxed_by_it(seller, client):
    rates()
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    tenant = agent.tenant
    subscribe(tenant, make_plan(slug="portal-profile"), starts_on=date(2026, 1, 1))
    viewer = MembershipFactory(tenant=tenant, role="viewer").user
    manager = MembershipFactory(tenant=tenant, role="admin").user
    body = {
        "legal_name": "Kunde GmbH",
        "address_line1": "Weg 2",
        "city": "Köln",
        "country": "de",
        "is_business": "on",
    }

    client.force_login(viewer)
    assert client.post("/billing-profile/", body).status_code == 403
    client.force_login(manager)
    bad = client.post("/billing-profile/", {**body, "tax_id": INVALID_DE_VAT})
    assert bad.status_code == 400 and "not a valid EU VAT number" in bad.content.decode()
    assert not BillingProfile.objects.filter(tenant=tenant).exists()

    assert client.post("/billing-profile/", body).status_code == 302  # a German consumer price: 19 %
    start, _ = invoicing.current_period(tenant)
    assert invoicing.generate_invoice(tenant.pk, start).lines.get(kind="tax").amount == cents(
        Decimal(49) * Decimal("0.19")
    )
    assert client.post("/billing-profile/", {**body, "tax_id": "DE 136 695 976"}).status_code == 302
    assert BillingProfile.objects.get(tenant=tenant).tax_id == VALID_DE_VAT
    assert invoicing.generate_invoice(tenant.pk, start).lines.get(kind="tax").amount == 0  # reverse charge
    assert "Kunde GmbH" in client.get("/billing-profile/").content.decode()
