"""``POST /stripe/webhook``: signed Stripe events move our invoices forward only, once each (DESIGN §7)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import stripe
from django.db import connection
from django.test import Client

from billing.models import Invoice
from billing.pricing import to_minor_units
from payments import stripe_sync
from payments.models import StripeEvent
from tenants.models import Tenant
from tests.payments.stripe_world import (
    SECRET,
    Status,
    billed_tenant,
    deliver,
    event_for,
    finalized,
    interrupted_at_finalize,
    paid_event,
    paid_stripe_invoice_naming,
    snapshot,
    stripe_copies,
    typical_usage,
)
from tests.stripe_double import build_webhook


@pytest.mark.django_db
@pytest.mark.parametrize(
    "tamper",
    [
        "wrong secret",
        "body changed after signing",
        "no signature header",
        "garbage signature header",
        "no v1 signature",
        "not json, correctly signed",
        "json but not an event, correctly signed",
        "secret not configured",
    ],
)
def test_a_delivery_without_a_valid_signature_is_refused_with_400_and_changes_nothing(
    double, open_invoice, settings, tamper
):
    event = paid_event(double, open_invoice)
    payload = json.dumps(event, indent=2)
    signature = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    before = snapshot(open_invoice)
    if tamper == "wrong secret":
        signature = stripe.WebhookSignature.generate_signature_header(payload, "whsec_someone_else")
    elif tamper == "body changed after signing":
        payload = payload.replace('"paid"', '"void"')
    elif tamper == "no signature header":
        signature = ""
    elif tamper == "garbage signature header":
        signature = "t=abc,v1=,,=="
    elif tamper == "no v1 signature":
        signature = signature.replace("v1=", "v0=")
    elif tamper == "not json, correctly signed":
        payload = "paid, honestly"
        signature = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    elif tamper == "json but not an event, correctly signed":
        payload = json.dumps([{"id": event["id"]}])
        signature = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    elif tamper == "secret not configured":
        settings.STRIPE_WEBHOOK_SECRET = ""

    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature else {}
    response = Client().post("/stripe/webhook", payload, content_type="application/json", **headers)

    assert response.status_code == 400
    assert "error" in response.json()
    assert snapshot(open_invoice) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "where",
    ["event id", "event id, trailing", "event type", "invoice metadata value", "a key deep in the payload"],
)
def test_a_signed_event_holding_nul_is_refused_with_400_not_a_500(double, open_invoice, where):
    """PostgreSQL stores no NUL (text or jsonb); a signed event holding one is not Stripe's."""
    event = paid_event(double, open_invoice)
    before = snapshot(open_invoice)
    if where == "event id":
        event["id"] = "evt_\x00"
    elif where == "event id, trailing":
        event["id"] += "\x00"
    elif where == "event type":
        event["type"] = "invoice.paid\x00"
    elif where == "invoice metadata value":
        event["data"]["object"]["metadata"] = {"note": "a\x00b"}
    else:
        event["data"]["object"]["lines"] = {"nested": [{"k\x00": 1}]}

    response = deliver(event)

    assert response.status_code == 400 and "error" in response.json()
    assert snapshot(open_invoice) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("age_seconds", "accepted"),
    [(301, False), (3600, False), (-3600, False), (-120, False), (290, True), (-10, True), (0, True)],
)
def test_stale_and_future_signatures_are_refused(double, open_invoice, age_seconds, accepted):
    event = paid_event(double, open_invoice)
    before = snapshot(open_invoice)

    response = deliver(event, timestamp=int(time.time()) - age_seconds)

    assert response.status_code == (200 if accepted else 400)
    open_invoice.refresh_from_db()
    assert open_invoice.status == (Status.PAID if accepted else Status.OPEN)
    if not accepted:
        assert snapshot(open_invoice) == before


@pytest.mark.django_db
def test_a_delivery_signed_the_way_the_double_builds_it_during_secret_rolling_is_accepted(
    double, open_invoice
):
    delivery = build_webhook(paid_event(double, open_invoice), ["whsec_old", SECRET])
    response = Client().post(
        "/stripe/webhook",
        delivery.payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=delivery.signature,
    )
    assert response.status_code == 200
    open_invoice.refresh_from_db()
    assert open_invoice.status == Status.PAID


@pytest.mark.django_db
def test_a_redelivered_event_is_processed_once(double, open_invoice):
    event = paid_event(double, open_invoice)

    first = deliver(event)
    after_first = snapshot(open_invoice)
    second = deliver(event, timestamp=int(time.time()) + 5)  # Stripe re-signs each delivery

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["outcome"] == "moved open → paid"
    assert second.json()["outcome"] == "duplicate: already processed"
    assert snapshot(open_invoice) == after_first
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type, stored.invoice_id) == (event["id"], "invoice.paid", open_invoice.pk)
    assert stored.payload == event and stored.processed_at is not None


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_of_one_event_are_processed_once(double, open_invoice):
    event = paid_event(double, open_invoice)
    barrier, responses = threading.Barrier(4), []

    def post():
        barrier.wait()
        try:
            responses.append(deliver(event))
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert [r.status_code for r in responses] == [200] * 4
    assert outcomes == ["duplicate: already processed"] * 3 + ["moved open → paid"]
    assert StripeEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("stripe_steps", "deliveries", "final"),
    [
        # paid, then an older payment failure arrives late
        (["pay"], ["invoice.paid", "invoice.payment_failed"], Status.PAID),
        (["mark_uncollectible", "pay"], ["invoice.paid", "invoice.marked_uncollectible"], Status.PAID),
        (["mark_uncollectible", "pay"], ["invoice.marked_uncollectible", "invoice.paid"], Status.PAID),
        (["mark_uncollectible", "void"], ["invoice.voided", "invoice.marked_uncollectible"], Status.VOID),
        (
            ["mark_uncollectible"],
            ["invoice.marked_uncollectible", "invoice.payment_failed"],
            Status.UNCOLLECTIBLE,
        ),
        (["void"], ["invoice.voided"], Status.VOID),
    ],
)
def test_events_move_an_invoice_forward_only_whatever_order_they_arrive_in(
    double, open_invoice, stripe_steps, deliveries, final
):
    for step in stripe_steps:
        double.transition(open_invoice.stripe_invoice_id, step)
    snapshot_object = double.invoice(open_invoice.stripe_invoice_id)
    events = {
        e["type"]: e for e in double.events() if e["data"]["object"]["id"] == open_invoice.stripe_invoice_id
    }
    events["invoice.payment_failed"] = build_webhook(
        dict(snapshot_object, status="open"), SECRET, event_type="invoice.payment_failed"
    ).event

    for event_type in deliveries:
        assert deliver(events[event_type]).status_code == 200

    open_invoice.refresh_from_db()
    assert open_invoice.status == final
    assert StripeEvent.objects.filter(processed_at__isnull=False).count() == len(deliveries)


@pytest.mark.django_db
def test_a_paid_invoice_never_returns_to_open_or_moves_to_void(double, open_invoice):
    deliver(paid_event(double, open_invoice))
    stripe_object = double.invoice(open_invoice.stripe_invoice_id)
    for event_type, status in [("invoice.payment_failed", "open"), ("invoice.voided", "void")]:
        event = build_webhook(dict(stripe_object, status=status), SECRET, event_type=event_type).event
        response = deliver(event)
        assert response.status_code == 200 and response.json()["outcome"].startswith("kept paid")
    open_invoice.refresh_from_db()
    assert (open_invoice.status, open_invoice.stripe_status) == (Status.PAID, "paid")


@pytest.mark.django_db
def test_an_event_that_overtakes_the_sync_finds_the_invoice_by_our_metadata(double, plan):
    invoice = interrupted_at_finalize(double, plan, "crash_after", stripe.APIConnectionError)
    (copy,) = stripe_copies(double, invoice)
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="")  # as if we never recorded its id
    double.transition(copy["id"], "pay")

    response = deliver(event_for(double, copy["id"], "invoice.paid"))

    assert response.json()["outcome"] == "moved open → paid"
    invoice.refresh_from_db()
    assert invoice.status == Status.PAID


@pytest.mark.django_db
@pytest.mark.parametrize(
    "whose", ["unknown stripe invoice", "another deployment's", "no metadata", "not an invoice"]
)
def test_events_for_invoices_that_are_not_ours_are_acknowledged_and_stored(double, open_invoice, whose):
    stripe_object = double.invoice(open_invoice.stripe_invoice_id)
    if whose == "unknown stripe invoice":
        stripe_object = dict(stripe_object, id="in_unknown", metadata={})
    elif whose == "another deployment's":
        stripe_object = dict(
            stripe_object,
            id="in_other",
            metadata=dict(stripe_object["metadata"], meterline_namespace="staging"),
        )
    elif whose == "no metadata":
        stripe_object = dict(stripe_object, id="in_bare", metadata=None)
    else:
        stripe_object = "in_" + "x" * 20
    event = build_webhook({"id": "x", "object": "invoice"}, SECRET, event_type="invoice.paid").event
    event["data"]["object"] = stripe_object

    response = deliver(event)

    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored: not one of our invoices"
    open_invoice.refresh_from_db()
    assert open_invoice.status == Status.OPEN
    assert StripeEvent.objects.get().invoice is None


@pytest.mark.django_db
def test_event_types_we_do_not_act_on_are_acknowledged(double, open_invoice):
    (event,) = double.events("customer.created")
    response = deliver(event)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored: not an event we act on"


@pytest.mark.django_db
def test_the_webhook_answers_only_post(double):
    assert Client().get("/stripe/webhook").status_code == 405


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("whose", "held_because"),
    [
        ("another customer's", "is not the tenant's"),
        ("a different amount", "Stripe total"),
        ("another currency", "currency eur is not ours"),
        ("a tenant without a Stripe customer yet", "no Stripe customer on record"),
        ("the tenant's, for our total", None),
    ],
)
def test_an_event_that_only_names_our_invoice_moves_it_only_when_customer_currency_and_total_are_ours(
    double, plan, caplog, whose, held_because
):
    invoice = finalized(billed_tenant(plan), typical_usage())
    ours = to_minor_units(invoice.total, invoice.currency)
    api = double.client()
    customer = stripe_sync.ensure_customer(stripe_sync.client(), invoice.tenant)
    amount, currency = ours, "usd"
    if whose == "another customer's":
        customer = api.v1.customers.create({"name": invoice.tenant.name}).id
    elif whose == "a different amount":
        amount = ours - 1
    elif whose == "another currency":
        currency = "eur"
    elif whose == "a tenant without a Stripe customer yet":
        Tenant.objects.filter(pk=invoice.tenant_id).update(stripe_customer_id="")
    event = paid_stripe_invoice_naming(double, invoice, customer=customer, amount=amount, currency=currency)
    before = snapshot(invoice)

    response = deliver(event)

    assert response.status_code == 200
    stored = StripeEvent.objects.get(event_id=event["id"])
    assert (stored.outcome, stored.invoice) == (response.json()["outcome"], invoice)
    if held_because is None:
        assert stored.outcome == "moved open → paid"
        invoice.refresh_from_db()
        assert (invoice.status, invoice.stripe_status) == (Status.PAID, "paid")
        return
    assert stored.outcome.startswith("held for review: ") and held_because in stored.outcome
    assert snapshot(invoice)[:3] == before[:3]  # status, when it changed, Stripe status: untouched
    assert any(r.levelname == "WARNING" and "held for review" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_the_admin_lists_the_events_held_for_review(double, plan, admin_client):
    invoice = finalized(billed_tenant(plan), typical_usage())
    customer = stripe_sync.ensure_customer(stripe_sync.client(), invoice.tenant)
    ours = to_minor_units(invoice.total, invoice.currency)
    held = paid_stripe_invoice_naming(double, invoice, customer=customer, amount=ours + 100, currency="usd")
    deliver(held)
    (ignored,) = double.events("customer.created")
    deliver(ignored)

    page = admin_client.get("/admin/payments/stripeevent/", {"review": "held"}).content.decode()

    assert held["id"] in page and ignored["id"] not in page
    assert ignored["id"] in admin_client.get("/admin/payments/stripeevent/").content.decode()
