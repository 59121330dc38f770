"""Stripe Tax (``STRIPE_TAX_ENABLED``, decision 019), through HTTP and the Stripe double: the agent reports usage,
the month's invoice with a 15 % coupon is finalized with the tax Stripe Tax computed for its discounted lines,
prepaid credit is applied after it, and the Stripe invoice (automatic tax, the calculation's line items) totals
exactly ours. The double collects 19 % in Germany; every amount is worked out here in integer cents."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.utils import timezone

from billing import credit_notes, credits, invoicing, periods
from billing import tasks as billing_tasks
from billing.models import (
    AppliedCoupon,
    BillingProfile,
    Coupon,
    CreditNote,
    Invoice,
    InvoiceNumberSequence,
)
from billing.pricing import to_minor_units
from billing.tax_calculation import TaxCalculationError
from notifications.models import Event
from payments import tasks
from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, MembershipFactory, TenantFactory, api_key_for
from tests.payments.stripe_world import SyncState, deliver, event_for

pytestmark = pytest.mark.django_db
PERCENT = 19
CALCULATIONS = r"/v1/tax/calculations"


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def shares(amounts: list[int], net: int) -> list[int]:
    """``net`` cents split over ``amounts`` in proportion, largest remainders first (ties: the earlier line)."""
    total = sum(amounts)
    floors = [net * a // total for a in amounts]
    order = sorted(range(len(amounts)), key=lambda i: (-(net * amounts[i] % total), i))
    for i in order[: net - sum(floors)]:
        floors[i] += 1
    return floors


@pytest.fixture
def stripe_tax(double, settings):
    settings.STRIPE_TAX_ENABLED = True
    double.set_tax_rate("DE", PERCENT)
    return double


def billed(country="DE", postal_code="10115", **profile):
    """A tenant with a $49 plan ($0.01 a TTS character, $0.005 an STT second), a 15 % coupon, a billing profile,
    and last month's usage reported by its agent through the API."""
    tenant = TenantFactory(timezone="UTC", billing_email="ap@buyer.test")
    agent = AgentFactory(tenant=tenant)
    current, _ = invoicing.current_period(tenant)
    last = periods.previous_month(current)
    plan = make_plan(
        slug=f"tax-{tenant.pk}",
        prices=[
            {"meter_id": "tts_characters", "unit_amount": Decimal("0.01"), "unit_size": Decimal(1)},
            {"meter_id": "stt_audio_seconds", "unit_amount": Decimal("0.005"), "unit_size": Decimal(1)},
        ],
        effective_from=last - timedelta(days=31),
    )
    subscribe(tenant, plan, starts_on=last)
    coupon = Coupon.objects.create(
        code=f"launch-{tenant.pk}", name="15 % off", percent_off=Decimal(15), duration="forever"
    )
    AppliedCoupon.objects.create(tenant=tenant, coupon=coupon, starts_on=last)
    BillingProfile.objects.create(
        tenant=tenant,
        legal_name="Käufer GmbH",
        address_line1="Hauptstr. 1",
        postal_code=postal_code,
        city="Berlin",
        country=country,
        is_business=False,
        **profile,
    )
    when = periods.local_midnight(current, tenant.timezone) - timedelta(hours=3)
    events = [
        {"id": "e1", "timestamp": when.isoformat(), "session_id": "call-1", "provider": "elevenlabs",
         "model": "v2", "usage": {"tts_characters": 1234}},
        {"id": "e2", "timestamp": when.isoformat(), "session_id": "call-1", "provider": "deepgram",
         "model": "nova-3", "usage": {"stt_audio_seconds": 777}},
    ]  # fmt: skip
    assert AgentClient(api_key_for(agent)).post("/api/v1/events", {"events": events}).json()["accepted"] == 2
    return tenant, last, current


def test_invoice_with_a_coupon_is_taxed_by_stripe_tax_synced_with_automatic_tax_and_totals_agree(
    stripe_tax, client
):
    double = stripe_tax
    tenant, last, current = billed()
    credits.grant(tenant, "10.00", source="promotional", reason="welcome", effective_at=timezone.now())

    # the draft: no calculation for this tenant yet, so no estimate, and the line says so
    draft = invoicing.generate_invoice(tenant.pk, last)
    (estimate,) = draft.lines.filter(kind="tax")
    assert (
        estimate.amount == 0
        and "computed by Stripe Tax when the invoice is finalized" in estimate.description
    )
    assert double.requests_to("POST", CALCULATIONS) == []  # drafts never call Stripe

    invoice = invoicing.finalize_invoice(draft.pk, force=True, now=timezone.now())

    lines_cents = [4900, half_up(777 * 5, 10), 1234]  # base fee, STT ($3.885 → $3.89), TTS
    subtotal = sum(lines_cents)
    discount = half_up(subtotal * 15, 100)
    net = subtotal - discount
    taxed = shares(lines_cents, net)
    tax = sum(half_up(share * PERCENT, 100) for share in taxed)
    assert (subtotal, discount, net) == (6523, 978, 5545)

    (calculation,) = double.tax_calculations
    assert [
        (item["amount"], item["tax_behavior"], item["tax_code"]) for item in calculation["line_items"]
    ] == [(share, "exclusive", "txcd_10103001") for share in taxed]
    assert calculation["address"]["country"] == "DE" and calculation["address"]["postal_code"] == "10115"
    (request,) = double.requests_to("POST", CALCULATIONS)
    assert request.idempotency_key.startswith(f"meterline-tax-calculation-{invoice.pk}-")

    by_kind = {line.kind: line for line in invoice.lines.all()}
    assert to_minor_units(by_kind["discount"].amount, "USD") == -discount
    assert to_minor_units(by_kind["tax"].amount, "USD") == tax == calculation["tax_amount_exclusive"]
    assert by_kind["credits_applied"].amount == Decimal("-10.00")
    assert to_minor_units(invoice.total, "USD") == net + tax - 1000
    assert invoice.stripe_tax_calculation_id == calculation["id"]
    assert by_kind["tax"].price_snapshot["breakdown"] == [
        {
            "name": "VAT (DE)",
            "percent": "19.0",
            "taxable": str(Decimal(net) / 100),
            "tax": str(Decimal(tax) / 100),
        }
    ]
    rate = (Decimal(tax) / net * 100).quantize(Decimal("0.000001"))
    assert BillingProfile.objects.get(tenant=tenant).stripe_tax_percent == rate

    client.force_login(MembershipFactory(tenant=tenant).user)  # the printed invoice's breakdown per rate
    page = client.get(f"/invoices/{invoice.pk}/print/").content.decode()
    assert "VAT (DE)" in page and f"${Decimal(tax) / 100}" in page and f"${Decimal(net) / 100}" in page
    assert client.get(f"/invoices/{invoice.pk}/pdf/").content.startswith(b"%PDF")

    BillingProfile.objects.filter(tenant=tenant).update(city="München", postal_code="80331")  # moved since
    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED
    invoice.refresh_from_db()
    copy = double.invoice(invoice.stripe_invoice_id)
    assert copy["automatic_tax"]["enabled"] and copy["automatic_tax"]["status"] == "complete"
    assert copy["total"] == to_minor_units(invoice.total, "USD") == net + tax - 1000
    assert sum(row["amount"] for row in copy["total_taxes"]) == tax
    items = sorted(
        (i for i in double.invoice_items if i["invoice"] == copy["id"]),
        key=lambda i: int(i["metadata"]["meterline_line_position"]),
    )
    assert [i["amount"] for i in items] == [
        *taxed,
        0,
        -1000,
    ]  # sales as taxed, the coupon spread, no tax item
    address = double.customers[0]["address"]  # where the calculation taxed it, not where the tenant is now
    assert (address["country"], address["postal_code"], address["city"]) == ("DE", "10115", "Berlin")

    # paid by card, then fully credited with a refund: Stripe takes the note as it took the invoice
    double.transition(invoice.stripe_invoice_id, "pay_by_card")
    assert deliver(event_for(double, invoice.stripe_invoice_id, "invoice.paid")).status_code == 200
    note = credit_notes.issue(invoice.pk, outcome="refund", reason="order_change")
    assert note.total == invoice.total
    assert tasks.sync_credit_note_to_stripe(note.pk) == CreditNote.SyncState.SYNCED
    assert [r["amount"] for r in double.refunds] == [net + tax - 1000]

    # next month's draft estimates with the rate Stripe returned, without asking Stripe again
    following = invoicing.generate_invoice(tenant.pk, current)
    base = 4900 - half_up(4900 * 15, 100)
    (estimate,) = following.lines.filter(kind="tax")
    assert estimate.amount == cents(Decimal(base) / 100 * rate / 100)
    assert "estimated at" in estimate.description
    assert len(double.requests_to("POST", CALCULATIONS)) == 1


def test_a_late_correction_is_taxed_by_stripe_on_the_next_invoice_and_the_earlier_tax_is_not_adjusted(
    stripe_tax,
):
    double = stripe_tax
    tenant, last, current = billed()
    invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, last).pk, force=True)
    agent = tenant.agents.get()
    when = periods.local_midnight(current, tenant.timezone) - timedelta(hours=3)
    corrected = {
        "id": "e1-fixed",
        "replaces": "e1",  # the agent reported 1234 TTS characters; it was 234
        "timestamp": when.isoformat(),
        "session_id": "call-1",
        "provider": "elevenlabs",
        "model": "v2",
        "usage": {"tts_characters": 234},
    }
    assert AgentClient(api_key_for(agent)).post("/api/v1/events", {"events": [corrected]}).status_code == 200

    draft = invoicing.generate_invoice(tenant.pk, current)
    following = invoicing.finalize_invoice(draft.pk, force=True, now=timezone.now() + timedelta(days=40))

    adjustments = {
        line.adjusts_kind: to_minor_units(line.amount, "USD")
        for line in following.lines.filter(kind="adjustment", adjusted_period_start=last)
    }
    was, now = 4900 + 389 + 1234, 4900 + 389 + 234
    assert adjustments == {  # no "tax": Stripe taxes the adjustments with this invoice's own lines
        "usage": -1000,
        "discount": half_up(was * 15, 100) - half_up(now * 15, 100),  # +150
    }
    own = [4900, -half_up(4900 * 15, 100)]  # this month: the base fee and its coupon
    sales = own + list(adjustments.values())
    positive = [amount for amount in sales if amount > 0]
    taxed = shares(positive, sum(sales))
    tax = sum(half_up(share * PERCENT, 100) for share in taxed)
    calculation = double.tax_calculations[-1]
    assert sorted(item["amount"] for item in calculation["line_items"]) == sorted(taxed)
    assert to_minor_units(following.lines.get(kind="tax").amount, "USD") == tax
    assert to_minor_units(following.total, "USD") == sum(sales) + tax
    assert tasks.sync_invoice_to_stripe(following.pk) == SyncState.SYNCED
    following.refresh_from_db()
    assert double.invoice(following.stripe_invoice_id)["total"] == sum(sales) + tax


def test_stripe_tax_failing_leaves_the_invoice_a_draft_with_the_error_and_the_task_retries(
    stripe_tax, eager_tasks, admin_client
):
    double = stripe_tax
    tenant, last, _ = billed()
    draft = invoicing.generate_invoice(tenant.pk, last)
    fault = double.inject(CALCULATIONS, "POST", "500", times=1000)

    result = billing_tasks.finalize_invoice.apply(args=[draft.pk], kwargs={"force": True})

    assert isinstance(result.result, TaxCalculationError)
    tries = 1 + billing_tasks.finalize_invoice.max_retries
    assert fault.fired == 3 * tries  # each try: the SDK's request and its two retries under one key
    keys = {r.idempotency_key for r in double.requests_to("POST", CALCULATIONS)}
    assert len(keys) == 1  # every retry asked for the same calculation
    draft.refresh_from_db()
    assert draft.status == Invoice.Status.DRAFT and draft.number is None
    assert "Stripe Tax did not answer" in draft.finalization_error
    assert not InvoiceNumberSequence.objects.exists()  # no number was taken
    assert not Event.objects.filter(type="invoice.finalized").exists()
    page = admin_client.get(f"/admin/billing/invoice/{draft.pk}/change/").content.decode()
    assert "Stripe Tax did not answer" in page

    double.clear_faults()  # Stripe is back: the next try (a retry, or the beat) finalizes it
    assert billing_tasks.finalize_invoice.apply(args=[draft.pk], kwargs={"force": True}).get()
    draft.refresh_from_db()
    assert draft.status == Invoice.Status.OPEN and draft.finalization_error == ""
    assert len(double.tax_calculations) == 1


def test_an_address_stripe_tax_cannot_locate_is_a_clear_error_for_staff_not_retried(stripe_tax):
    double = stripe_tax
    tenant, last, _ = billed(country="US", postal_code="", region="CA")
    draft = invoicing.generate_invoice(tenant.pk, last)

    with pytest.raises(TaxCalculationError) as raised:
        invoicing.finalize_invoice(draft.pk, force=True)

    assert "cannot locate the customer's address" in str(raised.value)
    assert len(double.requests_to("POST", CALCULATIONS)) == 1  # a refusal is not retried by the SDK
    draft.refresh_from_db()
    assert draft.status == Invoice.Status.DRAFT
    assert "correct the tenant's billing profile" in draft.finalization_error


def test_a_lost_answer_is_replayed_under_the_same_key_so_one_calculation_is_made(stripe_tax):
    double = stripe_tax
    tenant, last, _ = billed()
    draft = invoicing.generate_invoice(tenant.pk, last)
    double.inject(CALCULATIONS, "POST", "crash_after", times=1)

    invoice = invoicing.finalize_invoice(draft.pk, force=True)

    first, second = double.requests_to("POST", CALCULATIONS)
    assert first.idempotency_key == second.idempotency_key and second.replayed
    (calculation,) = double.tax_calculations
    assert invoice.stripe_tax_calculation_id == calculation["id"]
    assert to_minor_units(invoice.lines.get(kind="tax").amount, "USD") == calculation["tax_amount_exclusive"]


def test_with_stripe_tax_off_the_staff_rates_apply_and_stripe_tax_is_never_asked(double):
    tenant, last, _ = billed()
    invoice = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, last).pk, force=True)
    assert not invoice.lines.filter(kind="tax").exists()  # no staff rate for DE here: no tax line
    assert invoice.stripe_tax_calculation_id == ""
    assert double.requests_to("POST", CALCULATIONS) == []
    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED
    invoice.refresh_from_db()
    assert not double.invoice(invoice.stripe_invoice_id)["automatic_tax"]["enabled"]
