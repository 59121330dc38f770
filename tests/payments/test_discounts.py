"""Coupons (issue 16 part 3, decision 019): staff apply them in the admin, invoices carry one discount line per
coupon before credit, Stripe's copy totals ours to the cent, the prepaid balance and late usage follow.
Amounts are worked out here: a $49 base fee, gpt-4o-mini at $0.30/M input and $1.20/M output tokens, and TTS
characters graduated after 100 free: the first 500 at $0.10 per 1,000, the rest at $0.05 per 1,000
(tests.billing.builders.default_prices)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from billing import credits, invoicing
from billing.models import AppliedCoupon, Coupon, Invoice
from billing.periods import next_month
from billing.pricing import to_minor_units
from payments import tasks
from spend import control
from tests.billing.builders import make_plan, store, subscribe
from tests.factories import AgentFactory, TenantFactory
from tests.payments.stripe_world import APRIL, MARCH, SyncState, assert_one_faithful_copy

pytestmark = pytest.mark.django_db
CENT = Decimal("0.01")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def tts(characters: int) -> Decimal:
    billable = max(characters - 100, 0)
    return cents((min(billable, 500) * Decimal("0.10") + max(billable - 500, 0) * Decimal("0.05")) / 1000)


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


@pytest.fixture
def billed(db):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC", billing_email="ap@acme.test"))
    subscribe(agent.tenant, make_plan(), starts_on=date(2026, 1, 1))
    return agent


def coupon(code, **fields) -> Coupon:
    return Coupon.objects.create(code=code, name=fields.pop("name", code), **fields)


def apply_in_admin(admin_client, tenant, made: Coupon, starts_on: date):
    return admin_client.post(
        "/admin/billing/appliedcoupon/add/", {"tenant": tenant.pk, "coupon": made.pk, "starts_on": starts_on}
    )


def finalize(tenant, period: date) -> Invoice:
    draft = invoicing.generate_invoice(tenant.pk, period)
    return invoicing.finalize_invoice(draft.pk, force=True, now=at(next_month(period)) + timedelta(days=2))


def test_a_coupon_and_a_once_coupon_are_lines_before_credit_and_stripe_totals_ours(
    double, billed, admin_client
):
    tenant = billed.tenant
    ten_off = coupon("ten-off", name="10 % off", percent_off=Decimal(10), duration="forever")
    tts_once = coupon(
        "tts-5", name="$5 off TTS", amount_off=Decimal(5), currency="USD", meters=["tts_characters"]
    )
    assert apply_in_admin(admin_client, tenant, ten_off, MARCH).status_code == 302
    assert apply_in_admin(admin_client, tenant, tts_once, MARCH).status_code == 302
    llm = {"llm_input_text_tokens": 3_000_000, "llm_output_text_tokens": 1_000_000}
    store(billed, at(date(2026, 3, 10)), llm, "m1")
    store(
        billed, at(date(2026, 3, 11)), {"tts_characters": 400_000}, "m2", provider="Cartesia", model="sonic-3"
    )
    store(billed, at(date(2026, 4, 10)), llm, "a1")
    credits.grant(tenant, "20.00", source="promotional", reason="welcome", effective_at=at(MARCH))

    march = finalize(tenant, MARCH)
    fee, llm_cost, speech = Decimal("49.00"), Decimal("0.90") + Decimal("1.20"), tts(400_000)
    ten = cents((fee + llm_cost + speech) * Decimal("0.10"))
    five = min(Decimal(5), speech * Decimal("0.9"))  # what is left of the TTS line after the 10 %
    by_kind = [(line.kind, line.code, line.amount) for line in march.lines.order_by("position")]
    assert ("discount", "ten-off", -ten) in by_kind and ("discount", "tts-5", -five) in by_kind
    assert by_kind[-1] == ("credits_applied", "", Decimal("-20.00"))
    assert march.total == fee + llm_cost + speech - ten - five - Decimal(20)

    assert tasks.sync_invoice_to_stripe(march.pk) == SyncState.SYNCED
    copy = assert_one_faithful_copy(double, march)
    assert copy["total"] == to_minor_units(march.total, "USD")

    april = finalize(tenant, APRIL)  # the $5 coupon was for one period; 10 % goes on
    assert [(line.code, line.amount) for line in april.lines.filter(kind="discount")] == [
        ("ten-off", -cents((fee + llm_cost) * Decimal("0.10")))
    ]
    assert april.total == fee + llm_cost - cents((fee + llm_cost) * Decimal("0.10"))


def test_the_prepaid_balance_counts_the_discount_as_the_invoice_will(billed):
    tenant = billed.tenant
    coupon_ = coupon("half", percent_off=Decimal(50), duration="forever")
    AppliedCoupon.objects.create(tenant=tenant, coupon=coupon_, starts_on=date(2026, 1, 1))
    credits.grant(tenant, "100.00", source="purchased", reason="top-up")
    start, _ = invoicing.current_period(tenant)
    store(
        billed,
        datetime.now(UTC) - timedelta(minutes=5),
        {"tts_characters": 100_000},
        "now-1",
        provider="Cartesia",
        model="sonic-3",
    )
    this_month = cents((Decimal("49.00") + tts(100_000)) / 2)  # fee + 100 k TTS, half off
    last_month = cents(Decimal("49.00") / 2)  # not finalized yet: its fee, half off, is unbilled too
    assert control.balance(tenant).unbilled_usage == this_month + last_month
    assert invoicing.generate_invoice(tenant.pk, start).total == this_month


def test_late_usage_in_a_discounted_period_is_discounted_on_the_next_invoice(billed):
    tenant = billed.tenant
    AppliedCoupon.objects.create(
        tenant=tenant,
        coupon=coupon("q", percent_off=Decimal(20), duration="repeating", duration_periods=1),
        starts_on=MARCH,
    )
    march = finalize(tenant, MARCH)
    assert march.total == Decimal("49.00") - Decimal("9.80")
    store(
        billed,
        at(date(2026, 3, 20)),
        {"tts_characters": 1_000_000},
        "late",
        provider="Cartesia",
        model="sonic-3",
    )
    april = finalize(tenant, APRIL)
    late_tts = tts(1_000_000)
    adjustments = {line.adjusts_kind: line.amount for line in april.lines.filter(kind="adjustment")}
    assert adjustments["usage"] == late_tts
    assert adjustments["discount"] == -cents(
        late_tts * Decimal("0.20")
    )  # March's own coupon, on its late usage
    assert not april.lines.filter(kind="discount").exists()  # one period only


def test_a_coupon_limited_to_a_model_discounts_only_that_models_lines(billed):
    tenant = billed.tenant
    AppliedCoupon.objects.create(
        tenant=tenant,
        coupon=coupon("sonic", percent_off=Decimal(50), models_only=["sonic-3"]),
        starts_on=MARCH,
    )
    store(billed, at(date(2026, 3, 10)), {"llm_input_text_tokens": 1_000_000}, "m1")
    store(
        billed, at(date(2026, 3, 11)), {"tts_characters": 200_000}, "m2", provider="Cartesia", model="sonic-3"
    )
    march = finalize(tenant, MARCH)
    assert [line.amount for line in march.lines.filter(kind="discount")] == [-cents(tts(200_000) / 2)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"redeem_by": datetime(2026, 1, 1, tzinfo=UTC)}, "could be applied until"),
        ({"max_redemptions": 1}, "applied 1 times already"),
        ({"amount_off": Decimal(5), "currency": "EUR", "percent_off": None}, "is in EUR"),
    ],
)
def test_a_coupon_that_cannot_be_applied_is_refused_with_the_reason(billed, admin_client, fields, message):
    made = coupon("x", **{"percent_off": Decimal(10), **fields})
    if fields.get("max_redemptions"):
        AppliedCoupon.objects.create(tenant=TenantFactory(), coupon=made, starts_on=MARCH)
    response = apply_in_admin(admin_client, billed.tenant, made, MARCH)
    assert not AppliedCoupon.objects.filter(tenant=billed.tenant).exists()
    if response.status_code == 200:
        assert message in response.content.decode()
    else:  # refused under the coupon's lock, after the form's own checks
        assert response.status_code == 302
        follow = admin_client.get(response["Location"])
        assert message in follow.content.decode()


def test_applying_the_same_coupon_twice_and_bad_coupons_are_form_errors(billed, admin_client):
    made = coupon("y", percent_off=Decimal(10))
    assert apply_in_admin(admin_client, billed.tenant, made, MARCH).status_code == 302
    again = apply_in_admin(admin_client, billed.tenant, made, APRIL)
    assert again.status_code == 200 and "already applied" in again.content.decode()
    for bad in (
        {"percent_off": "101"},
        {"percent_off": "10", "amount_off": "5", "currency": "USD"},
        {"amount_off": "5.001", "currency": "USD"},
        {"amount_off": "5", "currency": ""},
        {"percent_off": "10", "duration": "repeating"},
        {"percent_off": "10", "meters": '["no_such_meter"]'},
    ):
        body = {"code": "bad", "name": "Bad", "duration": "once", "meters": "[]", "models_only": "[]", **bad}
        response = admin_client.post("/admin/billing/coupon/add/", body)
        assert response.status_code == 200, bad
    assert not Coupon.objects.filter(code="bad").exists()
