"""Issue 16 end to end, through HTTP and the Stripe double: an agent reports usage, the month's invoice carries a
coupon and tax, is finalized, synced and paid by card; staff credit part of it with a refund; then the agent
corrects an event of that finalized month and the next invoice is lower by exactly the difference. Every amount
is worked out here from the plan (a $49 base fee, $0.01 a TTS character), a 15 % coupon and 20 % French VAT,
and Stripe's figures equal ours in minor units."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.utils import timezone

from billing import credit_notes, invoicing, periods
from billing.credit_notes import Request
from billing.models import AppliedCoupon, BillingProfile, Coupon, CreditNote, Invoice, TaxRate
from billing.pricing import to_minor_units
from payments import tasks
from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.payments.stripe_world import SyncState, assert_one_faithful_copy, deliver, event_for

pytestmark = pytest.mark.django_db
PER_CHAR, BASE, OFF, VAT = Decimal("0.01"), Decimal("49.00"), Decimal("0.15"), Decimal("0.20")


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def month(chars: int) -> dict[str, Decimal]:
    """A month's lines as the order of operations makes them: usage, the coupon on it all, VAT on the rest."""
    usage = cents(chars * PER_CHAR)
    discount = cents((BASE + usage) * OFF)
    tax = cents((BASE + usage - discount) * VAT)
    return {"usage": usage, "discount": -discount, "tax": tax, "total": BASE + usage - discount + tax}


@pytest.fixture
def seller(settings):
    settings.SELLER_NAME, settings.SELLER_COUNTRY = "Voicey SAS", "FR"
    settings.SELLER_ADDRESS, settings.SELLER_TAX_ID = "1 rue de la Paix; 75002 Paris", "FR40303265045"


def test_coupon_and_tax_invoice_paid_partly_refunded_then_a_late_correction_lowers_the_next(double, seller):
    tenant = TenantFactory(timezone="UTC", billing_email="ap@buyer.test")
    agent = AgentFactory(tenant=tenant)
    client = AgentClient(api_key_for(agent))
    current, _ = invoicing.current_period(tenant)
    last = periods.previous_month(current)
    plan = make_plan(
        slug="e2e",
        base_fee=str(BASE),
        prices=[{"meter_id": "tts_characters", "unit_amount": PER_CHAR, "unit_size": Decimal(1)}],
        effective_from=last - timedelta(days=31),
    )
    subscribe(tenant, plan, starts_on=last)
    coupon = Coupon.objects.create(
        code="launch", name="15 % off", percent_off=Decimal(15), duration="forever"
    )
    AppliedCoupon.objects.create(tenant=tenant, coupon=coupon, starts_on=last)
    TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=last)
    BillingProfile.objects.create(
        tenant=tenant,
        legal_name="Acheteur",
        address_line1="2 rue X",
        city="Lyon",
        country="FR",
        is_business=False,
    )

    # last month's usage, reported by the agent (within the 35 days a late event or a correction may take)
    when = periods.local_midnight(current, tenant.timezone)  # this month's first moment
    events = [
        {"id": "e1", "timestamp": (when - timedelta(hours=3)).isoformat(), "session_id": "call-1",
         "provider": "elevenlabs", "model": "v2", "usage": {"tts_characters": 1000}},
        {"id": "e2", "timestamp": (when - timedelta(hours=2)).isoformat(), "session_id": "call-1",
         "provider": "elevenlabs", "model": "v2", "usage": {"tts_characters": 500}},
    ]  # fmt: skip
    assert client.post("/api/v1/events", {"events": events}).json()["accepted"] == 2

    # finalized after the month, as the beat does, synced to Stripe and paid by card on the hosted page
    draft = invoicing.generate_invoice(tenant.pk, last)
    invoice = invoicing.finalize_invoice(draft.pk, now=timezone.now())
    expected = month(1500)
    kinds = {line.kind: line.amount for line in invoice.lines.all()}
    assert (kinds["base_fee"], kinds["usage"], kinds["discount"], kinds["tax"]) == (
        BASE,
        expected["usage"],
        expected["discount"],
        expected["tax"],
    )
    assert invoice.total == expected["total"] == Decimal("65.28")
    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED
    assert assert_one_faithful_copy(double, invoice)["total"] == to_minor_units(invoice.total, "USD")
    double.transition(invoice.stripe_invoice_id, "pay_by_card")
    assert deliver(event_for(double, invoice.stripe_invoice_id, "invoice.paid")).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID

    # staff credit $10 of the base fee with a refund: the note carries that line's share of coupon and tax
    fee = invoice.lines.get(kind="base_fee")
    note = credit_notes.issue(
        invoice.pk, outcome="refund", reason="order_change", lines=[Request(fee.pk, amount=Decimal("10.00"))]
    )
    share_off = cents(Decimal(10) * -expected["discount"] / (BASE + expected["usage"]))
    share_tax = cents((Decimal(10) - share_off) * VAT)
    assert note.number == f"CN-{timezone.localdate().year}-000001"
    assert note.total == Decimal(10) - share_off + share_tax == Decimal("10.20")
    assert tasks.sync_credit_note_to_stripe(note.pk) == CreditNote.SyncState.SYNCED
    (copy,) = [
        n for n in double.credit_notes if n["metadata"].get("meterline_credit_note_id") == str(note.pk)
    ]
    (refund,) = double.refunds
    assert copy["total"] == refund["amount"] == to_minor_units(note.total, "USD") == 1020
    assert double.invoice(invoice.stripe_invoice_id)["post_payment_credit_notes_amount"] == 1020

    # the agent corrects e1 of that finalized month: 400 characters, not 1000
    corrected = {**events[0], "id": "e1-fixed", "replaces": "e1", "usage": {"tts_characters": 400}}
    answer = client.post("/api/v1/events", {"events": [corrected]})
    assert answer.status_code == 200, answer.content
    invoice.refresh_from_db()
    assert invoice.total == expected["total"]  # the finalized invoice never changes

    # this month's invoice carries the difference as adjustments, before this month's own lines
    now_billed = month(900)
    draft = invoicing.generate_invoice(tenant.pk, current)
    following = invoicing.finalize_invoice(
        draft.pk, force=True, now=timezone.now() + timedelta(days=40)
    )  # after this month
    adjustments = {
        line.adjusts_kind: line.amount
        for line in following.lines.filter(kind="adjustment", adjusted_period_start=last)
    }
    assert adjustments == {
        "usage": now_billed["usage"] - expected["usage"],  # -6.00
        "discount": now_billed["discount"] - expected["discount"],  # +0.90
        "tax": now_billed["tax"] - expected["tax"],  # -1.02
    }
    this_month = month(0)
    assert following.total == this_month["total"] + sum(adjustments.values()) == Decimal("43.86")
    assert following.total < this_month["total"]
    assert tasks.sync_invoice_to_stripe(following.pk) == SyncState.SYNCED
    assert assert_one_faithful_copy(double, following)["total"] == to_minor_units(following.total, "USD")
