"""Top-ups and auto-recharge through Stripe (issue 15 part 5, decision 018), end to end: the portal or the spend
check asks, the real ``stripe`` SDK talks to the test double over HTTP, and the credit is granted exactly once
however the payment's news arrives (the /pay answer, a webhook, a replayed webhook, the reconcile beat)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import credits, invoicing, topups
from billing.models import CreditGrant, LedgerEntry, TopUp
from billing.pricing import to_minor_units
from notifications.models import Event
from payments import stripe_sync, tasks
from payments import topups as stripe_topups
from spend import control
from spend.models import SpendPolicy
from tests.billing.builders import make_plan, subscribe
from tests.factories import MembershipFactory
from tests.payments.stripe_world import deliver, event_for
from tests.usage.builders import event

pytestmark = pytest.mark.django_db
TTS = [{"meter_id": "tts_characters", "unit_amount": Decimal("0.01"), "unit_size": Decimal(1)}]


@pytest.fixture
def commits(django_capture_on_commit_callbacks):
    """Run what waits for a commit (the outbox's dispatch, hence the push to Stripe) as a real commit would."""

    def run(action, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return action(*args, **kwargs)

    return run


@pytest.fixture
def prepaid(tenant):
    """A $10 base fee and $0.01 a TTS character; prepaid-hard."""
    tenant.billing_email = "billing@acme.test"
    tenant.save()
    subscribe(tenant, make_plan(base_fee="10.00", prices=TTS), starts_on=invoicing.current_period(tenant)[0])
    SpendPolicy.objects.create(tenant=tenant, policy="prepaid-hard")
    return tenant


def card(double, tenant, method: str | None) -> str:
    """The tenant's Stripe customer (made by our code), with ``method`` as its default payment method, as a
    customer saving a card in Stripe's hosted pages leaves it."""
    customer_id = stripe_sync.ensure_customer(stripe_sync.client(), tenant)
    double.client().v1.customers.update(
        customer_id, {"invoice_settings": {"default_payment_method": method or ""}}
    )
    return customer_id


def manager_client(client, tenant):
    client.force_login(MembershipFactory(tenant=tenant, role="admin").user)
    return client


def buy(client, amount, key="key-1"):
    return client.post("/credits/", {"action": "buy", "amount": amount, "request_key": key})


def topup_invoices(double):
    return [i for i in double.invoices if i["metadata"].get("meterline_topup_id")]


def grants_of(tenant):
    return list(CreditGrant.objects.filter(tenant=tenant).order_by("id"))


def test_a_manager_buys_credit_charged_to_the_card_on_file_once_whatever_repeats(
    double, prepaid, client, eager_tasks, commits
):
    card(double, prepaid, "pm_card_visa")
    portal = manager_client(client, prepaid)
    before = control.balance(prepaid)

    response = commits(buy, portal, "25.50")
    assert response.status_code == 302, response.content
    assert commits(buy, portal, "25.50").status_code == 302  # the same page submitted twice buys once

    (topup,) = TopUp.objects.filter(tenant=prepaid)
    assert (topup.status, topup.amount, topup.automatic) == ("paid", Decimal("25.50"), False)
    (stripe_invoice,) = topup_invoices(double)
    assert stripe_invoice["status"] == "paid"
    assert stripe_invoice["collection_method"] == "charge_automatically"
    assert stripe_invoice["total"] == stripe_invoice["amount_paid"] == 2550
    assert len(double.requests_to("POST", r"/v1/invoices/[^/]+/pay")) == 1
    (granted,) = grants_of(prepaid)
    assert (granted.amount, granted.source, granted.topup_id) == (Decimal("25.50"), "purchased", topup.pk)
    after = control.balance(prepaid)
    assert after.ledger_balance - before.ledger_balance == Decimal("25.50")
    assert after.available - before.available == Decimal("25.50")

    # Stripe's own news of the payment, delivered twice, and the task and the beat running again: nothing more
    paid = event_for(double, stripe_invoice["id"], "invoice.paid")
    assert deliver(paid).status_code == 200
    assert deliver(paid).status_code == 200
    tasks.push_topup(topup.pk)
    stripe_topups.refresh_topup(topup.pk)
    assert len(grants_of(prepaid)) == 1 and len(topup_invoices(double)) == 1
    assert len(double.requests_to("POST", r"/v1/invoices/[^/]+/pay")) == 1
    recharged = Event.objects.filter(tenant=prepaid, type="balance.recharged")
    assert [e.data for e in recharged] == [
        {
            "topup_id": topup.pk,
            "grant_id": granted.pk,
            "amount": "25.50",
            "currency": "USD",
            "automatic": False,
        }
    ]

    page = portal.get("/credits/").content.decode()
    assert "top-up" in page and "$25.50" in page


def test_without_a_card_the_manager_pays_the_hosted_page_and_the_webhook_credits_once(
    double, prepaid, client, eager_tasks, commits
):
    card(double, prepaid, None)
    portal = manager_client(client, prepaid)
    assert commits(buy, portal, "40").status_code == 302
    (topup,) = TopUp.objects.filter(tenant=prepaid)
    (stripe_invoice,) = topup_invoices(double)
    assert topup.status == "open" and stripe_invoice["collection_method"] == "send_invoice"
    assert topup.hosted_invoice_url == stripe_invoice["hosted_invoice_url"]
    assert f'href="{topup.hosted_invoice_url}"' in portal.get("/credits/").content.decode()
    assert grants_of(prepaid) == []

    double.transition(stripe_invoice["id"], "pay")  # the customer pays Stripe's page
    paid = event_for(double, stripe_invoice["id"], "invoice.paid")
    for _ in range(3):
        assert deliver(paid).status_code == 200
    tasks.reconcile_topups()  # the beat, too, finds it paid
    topup.refresh_from_db()
    assert topup.status == "paid"
    assert [g.amount for g in grants_of(prepaid)] == [Decimal("40.00")]
    assert LedgerEntry.objects.filter(tenant=prepaid, kind="grant").count() == 1


def test_a_missed_webhook_is_caught_by_the_reconcile_beat(double, prepaid, eager_tasks, commits):
    card(double, prepaid, None)
    topup = commits(topups.request, prepaid, "12.00")
    stripe_id = TopUp.objects.get(pk=topup.pk).stripe_invoice_id
    double.transition(stripe_id, "pay")
    assert tasks.reconcile_topups() == {"checked": 1, "errors": 0}
    assert TopUp.objects.get(pk=topup.pk).status == "paid"
    assert [g.amount for g in grants_of(prepaid)] == [Decimal("12.00")]


@pytest.mark.parametrize("fault", ["crash_after", "timeout_after", "500"])
def test_a_lost_answer_at_any_step_never_makes_a_second_invoice_or_charge(double, prepaid, fault, settings):
    """A worker that lost Stripe's answer (or was killed) runs the push again: the idempotency keys and the
    lookup by our metadata carry on where it stopped."""
    settings.STRIPE_TIMEOUT_SECONDS = 0.5
    card(double, prepaid, "pm_card_visa")
    topup = topups.request(prepaid, "30.00")  # not eager: the push is run by hand below
    for path in (
        r"/v1/invoices",
        r"/v1/invoiceitems",
        r"/v1/invoices/[^/]+/finalize",
        r"/v1/invoices/[^/]+/pay",
    ):
        double.inject(path, "POST", fault, times=10, delay=1.0)
        with pytest.raises(stripe_sync.TRANSIENT_ERRORS):
            stripe_topups.push_topup(topup.pk)
        double.clear_faults()
    assert stripe_topups.push_topup(topup.pk) == "paid"
    assert stripe_topups.push_topup(topup.pk) == "paid"
    (stripe_invoice,) = topup_invoices(double)
    assert stripe_invoice["total"] == stripe_invoice["amount_paid"] == 3000
    assert len(double.invoice_items) == 1
    assert [g.amount for g in grants_of(prepaid)] == [Decimal("30.00")]


def usage_of(agent_client, chars: int, event_id: str) -> None:
    body = {"events": [event(event_id, usage={"tts_characters": chars})]}
    assert agent_client.post("/api/v1/events", body).json()["accepted"] == 1


def test_auto_recharge_tops_up_once_below_the_threshold_and_announces_it(
    double, prepaid, agent_client, eager_tasks, commits
):
    card(double, prepaid, "pm_card_visa")
    credits.grant(prepaid, "30.00", source="purchased", reason="first")
    control.save_alerts(
        prepaid,
        low_balance_threshold=Decimal("15.00"),
        auto_recharge_threshold=Decimal("10.00"),
        auto_recharge_amount=Decimal("50.00"),
    )
    assert (
        commits(control.check, prepaid).recharge is None
    )  # 30 − 10 fee = 20 available: above both thresholds

    usage_of(agent_client, 1500, "a")  # $15 of usage: 5 available
    checked = commits(control.check, prepaid)
    assert checked.balance_state == "low" and checked.recharge.startswith("requested")
    (topup,) = TopUp.objects.filter(tenant=prepaid)
    assert (topup.automatic, topup.status, topup.amount) == (True, "paid", Decimal("50.00"))
    assert control.balance(prepaid).available == Decimal("30.00") - 10 - 15 + 50
    assert commits(control.check, prepaid).recharge is None  # 55 available now
    assert TopUp.objects.filter(tenant=prepaid).count() == 1
    types = list(Event.objects.filter(tenant=prepaid).order_by("id").values_list("type", flat=True))
    assert types.count("balance.low") == 1 and types.count("balance.recharged") == 1


def test_one_auto_recharge_in_flight_however_many_checks_run(prepaid):
    """Stripe not configured here: the first auto-recharge stays pending, and no check asks for another."""
    SpendPolicy.objects.filter(tenant=prepaid).update(
        auto_recharge_threshold=Decimal("100.00"), auto_recharge_amount=Decimal("20.00")
    )
    outcomes = [control.check(prepaid).recharge for _ in range(3)]
    assert outcomes[0].startswith("requested") and outcomes[1:] == ["in flight", "in flight"]
    assert topups.request(prepaid, "20.00", automatic=True) is None
    assert TopUp.objects.filter(tenant=prepaid, automatic=True).count() == 1


@pytest.mark.parametrize(
    "method", ["pm_card_chargeDeclined", "pm_card_chargeDeclinedInsufficientFunds", None]
)
def test_a_failed_auto_recharge_is_reported_once_and_not_retried_until_the_policy_is_saved(
    double, prepaid, eager_tasks, commits, method
):
    card(double, prepaid, method)
    control.save_alerts(
        prepaid,
        low_balance_threshold=None,
        auto_recharge_threshold=Decimal("5.00"),
        auto_recharge_amount=Decimal("20"),
    )
    assert commits(control.check, prepaid).recharge.startswith("requested")  # −10 available (the base fee)
    (topup,) = TopUp.objects.filter(tenant=prepaid)
    assert topup.status == "failed" and topup.failure_message
    if method is None:
        assert "no default payment method" in topup.failure_message
        assert topup_invoices(double) == []
    else:
        (stripe_invoice,) = topup_invoices(double)
        assert (
            stripe_invoice["status"] == "void" and stripe_invoice["amount_paid"] == 0
        )  # nothing collects it later
    assert grants_of(prepaid) == []
    failures = Event.objects.filter(tenant=prepaid, type="balance.recharge_failed")
    assert [e.data["topup_id"] for e in failures] == [topup.pk]

    for _ in range(3):  # the beat keeps checking: paused, not retried
        assert commits(control.check, prepaid).recharge == "paused"
    assert TopUp.objects.filter(tenant=prepaid).count() == 1

    card(double, prepaid, "pm_card_visa")  # the manager fixes the card and saves the settings
    control.save_alerts(
        prepaid,
        low_balance_threshold=None,
        auto_recharge_threshold=Decimal("5.00"),
        auto_recharge_amount=Decimal("20"),
    )
    assert commits(control.check, prepaid).recharge.startswith("requested")
    assert [t.status for t in TopUp.objects.filter(tenant=prepaid).order_by("id")] == ["failed", "paid"]
    assert [g.amount for g in grants_of(prepaid)] == [Decimal("20.00")]


def test_a_webhook_that_does_not_match_the_topup_credits_nothing(double, prepaid, eager_tasks, commits):
    card(double, prepaid, None)
    topup = commits(topups.request, prepaid, "12.00")
    stripe_id = TopUp.objects.get(pk=topup.pk).stripe_invoice_id
    double.transition(stripe_id, "pay")
    genuine = event_for(double, stripe_id, "invoice.paid")
    forged = {
        **genuine,
        "id": "evt_forged",
        "data": {"object": {**genuine["data"]["object"], "total": 1_000_000}},
    }
    assert deliver(forged).status_code == 200
    assert grants_of(prepaid) == []
    other = {
        **genuine,
        "id": "evt_other",
        "data": {"object": {**genuine["data"]["object"], "customer": "cus_x"}},
    }
    assert deliver(other).status_code == 200
    assert grants_of(prepaid) == []
    assert deliver(genuine).status_code == 200
    assert [g.amount for g in grants_of(prepaid)] == [Decimal("12.00")]


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("0", "between"),
        ("-5", "between"),
        ("4.99", "between"),
        ("100000.01", "between"),
        ("10.001", "smallest unit"),
        ("NaN", "Enter a number"),
        ("abc", "Enter a number"),
        ("", "required"),
    ],
)
def test_a_bad_amount_is_refused_naming_the_field_and_buys_nothing(double, prepaid, client, amount, message):
    response = buy(manager_client(client, prepaid), amount)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not TopUp.objects.exists() and topup_invoices(double) == []


def test_only_managers_buy_credit(double, prepaid, client):
    client.force_login(MembershipFactory(tenant=prepaid, role="viewer").user)
    assert buy(client, "20").status_code == 403
    assert client.get("/credits/").status_code == 200
    assert not TopUp.objects.exists()


def test_the_amounts_stripe_collects_equal_the_credit_in_minor_units_for_every_currency(
    double, eager_tasks, commits
):
    """JPY has no minor unit, KWD three: the Stripe invoice carries exactly the credit granted."""
    from tests.factories import TenantFactory

    for currency, amount in (("JPY", Decimal("1500")), ("KWD", Decimal("12.345")), ("EUR", Decimal("9.99"))):
        tenant = TenantFactory(currency=currency, billing_email=f"{currency}@acme.test")
        card(double, tenant, "pm_card_visa")
        topup = commits(topups.request, tenant, amount)
        (granted,) = grants_of(tenant)
        stripe_invoice = double.invoice(TopUp.objects.get(pk=topup.pk).stripe_invoice_id)
        assert stripe_invoice["currency"] == currency.lower()
        assert stripe_invoice["amount_paid"] == to_minor_units(amount, currency)
        assert granted.amount == amount


def test_staff_set_auto_recharge_in_the_admin_and_saving_resumes_a_paused_one(prepaid, admin_client):
    policy = SpendPolicy.objects.get(tenant=prepaid)
    url = f"/admin/spend/spendpolicy/{policy.pk}/change/"
    form = {"tenant": prepaid.pk, "policy": "prepaid-hard", "overdraft": "0", "low_balance_threshold": ""}
    for bad, field in (
        ({"auto_recharge_threshold": "10", "auto_recharge_amount": ""}, "needs an amount"),
        ({"auto_recharge_threshold": "10", "auto_recharge_amount": "1"}, "between"),
        ({"auto_recharge_threshold": "10", "auto_recharge_amount": "20.005"}, "smallest unit"),
        ({"auto_recharge_threshold": "-1", "auto_recharge_amount": "20"}, "negative"),
    ):
        response = admin_client.post(url, {**form, **bad})
        assert response.status_code == 200 and field in response.content.decode(), bad
    policy.refresh_from_db()
    assert policy.auto_recharge_threshold is None

    failed = topups.request(prepaid, "20.00", automatic=True)
    topups.fail(failed.pk, "declined")
    SpendPolicy.objects.filter(pk=policy.pk).update(
        auto_recharge_threshold=Decimal("10"), auto_recharge_amount=Decimal("20")
    )
    assert control.check(prepaid).recharge == "paused"
    saved = admin_client.post(url, {**form, "auto_recharge_threshold": "10", "auto_recharge_amount": "20"})
    assert saved.status_code == 302
    assert control.check(prepaid).recharge.startswith("requested")
    assert admin_client.get("/admin/billing/topup/").status_code == 200
    page = admin_client.get(url).content.decode()
    assert "USD available =" in page and "not yet invoiced" in page
