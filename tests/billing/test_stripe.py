"""Stripe (DESIGN §7): finalized invoices pushed to Stripe, webhooks taken back, reconcile — all through the real
``stripe`` SDK over real HTTP, against the Stripe test double served on a loopback port (tests/stripe_double)."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
import stripe
from django.contrib import messages
from django.db import connection
from django.test import Client, RequestFactory
from django.utils import timezone

from billing import invoicing
from billing.models import Invoice
from billing.periods import next_month
from billing.pricing import to_minor_units
from notifications.models import Event
from payments import stripe_sync, tasks
from payments.admin import retry_stripe_sync
from payments.models import StripeEvent
from tests import livekit_samples as samples
from tests.billing.builders import M, default_prices, make_plan, store, subscribe
from tests.factories import AgentFactory, TenantFactory
from tests.stripe_double import StripeDouble, build_webhook
from tests.stripe_double.fixtures import fast_stripe_retries, stripe_double  # noqa: F401

SECRET = "whsec_test_meterline"
MARCH = date(2026, 3, 1)
APRIL = date(2026, 4, 1)
Status, SyncState = Invoice.Status, Invoice.SyncState


@pytest.fixture
def double(stripe_double, settings, fast_stripe_retries):  # noqa: F811
    """The double, with our settings pointing at it (never a patch of our code or of the SDK)."""
    settings.STRIPE_API_KEY = "sk_test_meterline"
    settings.STRIPE_API_BASE = stripe_double.url
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_TIMEOUT_SECONDS = 1.0
    return stripe_double


@pytest.fixture
def plan(db):
    return make_plan()


def billed_tenant(plan, **tenant_fields):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC", **tenant_fields))
    subscribe(agent.tenant, plan)
    return agent


def at(day: date, hour=12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def finalized(agent, usage_events=(), period=MARCH, now=None) -> Invoice:
    """Store ``(day, usage, provider, model)`` events, then finalize the period's invoice (finalization prices
    the period itself, as it does after the draft generation that the beat normally runs first)."""
    for n, (day, usage, provider, model) in enumerate(usage_events):
        store(agent, at(day), usage, f"{period}-{n}", provider=provider, model=model)
    draft, _ = Invoice.objects.get_or_create(
        tenant=agent.tenant,
        period_start=period,
        defaults={"period_end": next_month(period), "currency": "USD"},
    )
    return invoicing.finalize_invoice(draft.pk, force=True, now=now)


def typical_usage(rng: random.Random | None = None):
    """Lines: base fee, LLM input and output, STT, TTS characters (graduated) and TTS audio (priced at $0)."""
    rng = rng or random.Random(0)
    llm = {
        "llm_input_text_tokens": rng.randint(1, 9_000_000),
        "llm_output_text_tokens": rng.randint(1, 900_000),
    }
    tts = {"tts_characters": rng.randint(1, 2_000_000), "tts_audio_seconds": 42}
    return [
        (date(2026, 3, 2), llm, "api.openai.com", "gpt-4o-mini"),
        (date(2026, 3, 4), {"stt_audio_seconds": f"{rng.randint(1, 99_999) / 100}"}, "Deepgram", "nova-3"),
        (date(2026, 3, 5), tts, "Cartesia", "sonic-3"),
    ]


def stripe_copies(double, invoice: Invoice) -> list[dict]:
    """Every Stripe invoice carrying our invoice's id in its metadata."""
    return [i for i in double.invoices if i["metadata"].get("meterline_invoice_id") == str(invoice.pk)]


def assert_one_faithful_copy(double, invoice: Invoice) -> dict:
    """Exactly one Stripe invoice for ours, finalized, one item per line with our amounts, the same total."""
    copies = stripe_copies(double, invoice)
    assert len(copies) == 1, [c["id"] for c in copies]
    copy = copies[0]
    items = sorted(
        (i for i in double.invoice_items if i["invoice"] == copy["id"]),
        key=lambda i: int(i["metadata"]["meterline_line_position"]),
    )
    lines = list(invoice.lines.order_by("position"))
    assert [
        (int(i["metadata"]["meterline_line_position"]), i["amount"], i["description"]) for i in items
    ] == [(line.position, to_minor_units(line.amount, invoice.currency), line.description) for line in lines]
    assert copy["total"] == to_minor_units(invoice.total, invoice.currency)
    assert copy["status"] != "draft"
    invoice.refresh_from_db()
    assert (invoice.sync_state, invoice.stripe_invoice_id, invoice.sync_error) == (
        SyncState.SYNCED,
        copy["id"],
        "",
    )
    return copy


def deliver(event: dict, *, secret: str = SECRET, timestamp: int | None = None, client: Client | None = None):
    """POST ``event`` to the webhook as Stripe does: pretty-printed JSON, signed with the real ``stripe``
    library's scheme (``WebhookSignature.generate_signature_header``)."""
    payload = json.dumps(event, indent=2)
    signature = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return (client or Client()).post(
        "/stripe/webhook", payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
    )


def event_for(double, stripe_invoice_id: str, event_type: str) -> dict:
    return next(
        e for e in reversed(double.events(event_type)) if e["data"]["object"]["id"] == stripe_invoice_id
    )


def synced(double, plan, **tenant_fields) -> Invoice:
    invoice = finalized(billed_tenant(plan, **tenant_fields), typical_usage())
    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.SYNCED
    invoice.refresh_from_db()
    return invoice


@pytest.mark.django_db
def test_usage_posted_through_the_api_ends_as_a_paid_stripe_invoice_with_our_total(
    double, agent_client, agent
):
    agent.tenant.billing_email = "billing@acme.test"
    agent.tenant.save()
    subscribe(agent.tenant, make_plan(), starts_on=date(2026, 1, 1))
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    response = agent_client.post(
        "/api/v1/livekit/metrics", {"session_id": "call-1", "metrics": samples.shifted_metrics(sample)}
    )
    assert response.status_code == 200, response.content
    period_start, _ = invoicing.current_period(agent.tenant, timezone.now() - timedelta(minutes=1))
    invoice = invoicing.generate_invoice(agent.tenant_id, period_start)
    invoice = invoicing.finalize_invoice(invoice.pk, force=True)
    assert invoice.lines.filter(kind="usage").count() >= 3 and invoice.total > 0

    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED

    copy = assert_one_faithful_copy(double, invoice)
    assert copy["status"] == "open" and copy["collection_method"] == "send_invoice" and copy["auto_advance"]
    assert copy["currency"] == "usd" and copy["due_date"] is not None
    assert copy["metadata"] == {
        "meterline_namespace": "meterline",
        "meterline_invoice_id": str(invoice.pk),
        "meterline_invoice_number": invoice.number,
        "meterline_tenant_id": str(agent.tenant_id),
    }
    (customer,) = double.customers
    assert (customer["name"], customer["email"]) == (agent.tenant.name, "billing@acme.test")
    agent.tenant.refresh_from_db()
    assert agent.tenant.stripe_customer_id == customer["id"] == copy["customer"]
    assert invoice.stripe_status == "open" and invoice.status == Status.OPEN

    double.transition(copy["id"], "pay")  # the customer pays on Stripe's hosted page
    response = deliver(event_for(double, copy["id"], "invoice.paid"))

    assert response.status_code == 200, response.content
    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_status) == (Status.PAID, "paid")
    assert double.invoice(copy["id"])["amount_paid"] == to_minor_units(invoice.total, "USD")
    assert StripeEvent.objects.get().invoice == invoice


@pytest.mark.django_db
def test_every_post_carries_an_idempotency_key_derived_from_our_ids(double, plan):
    invoice = synced(double, plan)
    tenant_id = invoice.tenant_id

    posts = [r for r in double.requests if r.method == "POST"]
    keys = [(r.path.replace(invoice.stripe_invoice_id, "{in}"), r.idempotency_key) for r in posts]
    customer_id = invoice.tenant.stripe_customer_id
    assert keys[0] == ("/v1/customers", f"meterline-customer-{tenant_id}")
    assert keys[1][0] == f"/v1/customers/{customer_id}"
    assert keys[1][1].startswith(f"meterline-customer-{tenant_id}-details-")
    assert keys[2] == ("/v1/invoices", f"meterline-invoice-{invoice.pk}")
    positions = list(invoice.lines.order_by("position").values_list("position", flat=True))
    assert keys[3:-1] == [("/v1/invoiceitems", f"meterline-item-{invoice.pk}-{p}") for p in positions]
    assert keys[-1] == ("/v1/invoices/{in}/finalize", f"meterline-finalize-{invoice.pk}")


@pytest.mark.django_db
def test_a_second_invoice_of_the_tenant_reuses_its_stripe_customer(double, plan):
    agent = billed_tenant(plan)
    march = finalized(agent, typical_usage())
    april = finalized(
        agent, [(date(2026, 4, 2), {"llm_input_text_tokens": 5 * M}, "api.openai.com", "gpt-4o")], APRIL
    )

    assert stripe_sync.sync_invoice(march.pk) == stripe_sync.sync_invoice(april.pk) == SyncState.SYNCED
    assert stripe_sync.sync_invoice(april.pk) == SyncState.SYNCED  # again: nothing more is sent

    assert len(double.customers) == 1 and len(double.requests_to("POST", r"/v1/customers")) == 1
    assert_one_faithful_copy(double, march) and assert_one_faithful_copy(double, april)


@pytest.mark.django_db
def test_negative_adjustment_lines_become_negative_invoice_items(double):
    prices = default_prices()
    prices[0]["minimum_charge"] = Decimal("5.00")  # llm input tokens: at least $5 a month once used
    agent = billed_tenant(make_plan(prices=prices))
    openai = ("api.openai.com", "gpt-4o-mini")
    march = finalized(agent, [(date(2026, 3, 2), {"llm_input_text_tokens": M}, *openai)])
    # late March usage now exceeds the minimum: April credits March's top-up back and bills the usage
    store(
        agent,
        at(date(2026, 3, 30)),
        {"llm_input_text_tokens": 20 * M},
        "late",
        provider=openai[0],
        model=openai[1],
    )
    april = finalized(agent, [], APRIL)
    credit = april.lines.get(kind="adjustment", adjusts_kind="minimum")
    assert credit.amount == Decimal("-4.70")

    for invoice in (march, april):
        assert stripe_sync.sync_invoice(invoice.pk) == SyncState.SYNCED
        assert_one_faithful_copy(double, invoice)
    (item,) = [i for i in double.invoice_items if i["metadata"]["meterline_line_id"] == str(credit.pk)]
    assert item["amount"] == -470


@pytest.mark.django_db
def test_an_invoice_with_nothing_to_collect_is_paid_on_stripe_and_here(double):
    agent = billed_tenant(make_plan(base_fee="0"))
    invoice = finalized(
        agent, [(date(2026, 3, 2), {"tts_characters": 50}, "Cartesia", "sonic-3")]
    )  # < free 100
    assert invoice.total == 0

    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.SYNCED

    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_status) == (Status.PAID, "paid")
    assert assert_one_faithful_copy(double, invoice)["status"] == "paid"


@pytest.mark.django_db
def test_drafts_and_invoices_settled_here_first_are_not_sent(double, plan):
    agent = billed_tenant(plan)
    draft = invoicing.generate_invoice(agent.tenant_id, MARCH)
    voided = invoicing.void_invoice(finalized(agent, typical_usage(), APRIL).pk)

    assert stripe_sync.sync_invoice(draft.pk) == SyncState.NOT_SYNCED
    assert stripe_sync.sync_invoice(voided.pk) == SyncState.NOT_SYNCED
    assert double.requests == []


@pytest.fixture
def eager_tasks():
    """Queued tasks run at once in this process, so a test sees what the queued task did."""
    from config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.mark.django_db
def test_nothing_is_sent_while_stripe_is_not_configured(
    double, plan, settings, django_capture_on_commit_callbacks, eager_tasks
):
    settings.STRIPE_API_KEY = ""
    with django_capture_on_commit_callbacks(execute=True):
        invoice = finalized(billed_tenant(plan), typical_usage())
    assert Event.objects.get(type="invoice.finalized").dispatched_at is not None
    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.NOT_SYNCED
    assert double.requests == []


@pytest.mark.django_db
def test_finalization_queues_the_stripe_sync_once_the_transaction_commits(
    double, plan, django_capture_on_commit_callbacks, eager_tasks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        invoice = finalized(billed_tenant(plan), typical_usage())
    assert double.requests == []  # nothing before the commit
    for callback in queued:
        callback()
    assert Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.SYNCED
    assert len(double.invoices) == 1


# (method, path) of every request the sync makes, and the faults each can meet.
POST_FAULTS = ["500", "429", "429-retryable", "timeout", "timeout_after", "crash_after", "crash_after_500"]
GET_FAULTS = ["500", "429", "429-retryable", "timeout"]
FAULT_POINTS = [
    ("GET", r"/v1/customers/search"),
    ("POST", r"/v1/customers"),
    ("POST", r"/v1/customers/cus_\w+"),
    ("GET", r"/v1/invoices"),
    ("POST", r"/v1/invoices"),
    ("GET", r"/v1/invoiceitems"),
    ("POST", r"/v1/invoiceitems"),
    ("GET", r"/v1/invoices/in_\w+"),
    ("POST", r"/v1/invoices/in_\w+/finalize"),
]
TRIALS = 100
MAX_ATTEMPTS = 12


def inject_random_faults(double, rng: random.Random) -> list[str]:
    injected = []
    for _ in range(rng.randint(1, 3)):
        method, path = rng.choice(FAULT_POINTS)
        kind = rng.choice(POST_FAULTS if method == "POST" else GET_FAULTS)
        # The SDK tries each request 3 times (NETWORK_RETRIES = 2): 3 or more failures end the sync half way.
        times = rng.randint(1, 5)
        headers = {"Stripe-Should-Retry": "true"} if kind == "429-retryable" else None
        double.inject(path, method, kind.removesuffix("-retryable"), times, delay=0.01, headers=headers)
        injected.append(f"{times}× {kind} on {method} {path}")
    return injected


@pytest.mark.django_db
def test_a_sync_interrupted_anywhere_and_run_again_makes_exactly_one_stripe_invoice(double, plan, settings):
    """100 seeded trials: random faults (500, 429, timeouts, answers lost after Stripe acted) at random requests,
    Stripe's search lagging or not, and sometimes a day between attempts so every idempotency key has expired.
    The sync is run until it succeeds; each time there is exactly one finalized Stripe invoice, faithful to ours.
    Each trial gets a fresh double of its own, so its state and request log are the trial's alone."""
    rng = random.Random(20261123)
    outcomes, interrupted = [], 0
    for trial in range(TRIALS):
        invoice = finalized(billed_tenant(plan), typical_usage(rng))
        with StripeDouble(seed=trial) as trial_double:
            settings.STRIPE_API_BASE = trial_double.url
            trial_double.search_delay_seconds = rng.choice([0, 60])
            injected = inject_random_faults(trial_double, rng)
            attempts, state = 0, None
            while attempts < MAX_ATTEMPTS:
                attempts += 1
                try:
                    state = stripe_sync.sync_invoice(invoice.pk)
                    break
                except stripe_sync.TRANSIENT_ERRORS:
                    invoice.refresh_from_db()
                    assert invoice.sync_state == SyncState.PENDING and "(will retry)" in invoice.sync_error
                    if rng.random() < 0.25:
                        trial_double.advance_time(25 * 3600)  # Stripe forgot our idempotency keys
            interrupted += attempts > 1
            try:
                assert state == SyncState.SYNCED
                assert_one_faithful_copy(trial_double, invoice)
                assert len(trial_double.customers) == 1
                assert not trial_double.internal_errors
                outcomes.append(True)
            except AssertionError as error:
                outcomes.append(False)
                print(f"trial {trial} failed after {attempts} attempts ({'; '.join(injected)}): {error}")

    summary = f"{sum(outcomes)} of {TRIALS} trials: exactly one faithful Stripe invoice"
    print(f"{summary}; {interrupted} interrupted half way")
    assert sum(outcomes) == TRIALS, summary
    assert interrupted >= TRIALS // 4, "too few trials were actually interrupted half way"


@pytest.mark.django_db
@pytest.mark.parametrize("created", ["/v1/customers", "/v1/invoices"])
def test_an_object_stripe_created_but_whose_answer_was_lost_is_found_a_day_later(double, plan, created):
    invoice = finalized(billed_tenant(plan), typical_usage())
    double.inject(created, "POST", "crash_after", times=3)
    with pytest.raises(stripe.APIConnectionError):
        stripe_sync.sync_invoice(invoice.pk)
    assert len(double.customers) == 1  # created on Stripe, but we never heard its id
    assert len(stripe_copies(double, invoice)) == (created == "/v1/invoices")
    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id == "" and invoice.sync_state == SyncState.PENDING

    double.advance_time(25 * 3600)  # its idempotency key expired: only a lookup prevents a second one
    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.SYNCED
    assert len(double.customers) == 1
    assert_one_faithful_copy(double, invoice)


@pytest.mark.django_db
def test_our_client_timeout_bounds_a_request_stripe_never_answers(double, plan, settings):
    settings.STRIPE_TIMEOUT_SECONDS = 0.2
    invoice = finalized(billed_tenant(plan), typical_usage())
    double.inject(r"/v1/invoices", "POST", "timeout", times=3, delay=5)

    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        stripe_sync.sync_invoice(invoice.pk)
    assert time.monotonic() - started < 2.5  # 3 tries × 0.2 s, not 3 × 5 s
    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.SYNCED
    assert_one_faithful_copy(double, invoice)


@pytest.mark.django_db
def test_a_refusal_marks_the_sync_failed_until_a_person_retries_it(double, plan, settings, rf):
    invoice = finalized(billed_tenant(plan), typical_usage())
    settings.STRIPE_API_KEY = "sk_live_wrong"  # Stripe answers 401: retrying the same request cannot help

    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.FAILED
    invoice.refresh_from_db()
    assert invoice.sync_state == SyncState.FAILED
    assert invoice.sync_error.startswith("AuthenticationError:") and "Invalid API Key" in invoice.sync_error
    assert stripe_sync.invoices_to_sync(timezone.now() + timedelta(days=1)) == []  # waits for a person

    settings.STRIPE_API_KEY = "sk_test_meterline"  # fixed; 'retry sync' marks it and queues the task
    assert stripe_sync.mark_for_retry([invoice.pk]) == [invoice.pk]
    invoice.refresh_from_db()
    assert invoice.sync_state == SyncState.PENDING
    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED  # what the queued task runs
    assert_one_faithful_copy(double, invoice)
    assert stripe_sync.mark_for_retry([invoice.pk]) == []  # synced: nothing to retry


@pytest.mark.django_db
def test_retry_sync_in_the_admin_explains_what_it_skipped(double, plan, settings, rf):
    invoice = synced(double, plan)
    draft = invoicing.generate_invoice(billed_tenant(plan).tenant_id, MARCH)
    modeladmin = mock.Mock()  # stands in for InvoiceAdmin; the action only calls its message_user

    retry_stripe_sync(modeladmin, rf.post("/"), Invoice.objects.filter(pk__in=[invoice.pk, draft.pk]))
    assert modeladmin.message_user.call_args.args[1:] == (
        "Queued the Stripe sync of 0 invoice(s). Skipped 2: drafts, already synced, or settled here before they "
        "reached Stripe.",
        messages.WARNING,
    )

    settings.STRIPE_API_KEY = ""
    retry_stripe_sync(modeladmin, rf.post("/"), Invoice.objects.filter(pk=invoice.pk))
    assert modeladmin.message_user.call_args.args[1:] == (
        "Stripe is not configured (STRIPE_API_KEY).",
        messages.ERROR,
    )
    assert len(stripe_copies(double, invoice)) == 1


@pytest.mark.django_db
def test_a_stripe_draft_that_differs_from_ours_is_not_finalized(double, plan):
    invoice = finalized(billed_tenant(plan), typical_usage())
    double.inject(r"/v1/invoices/in_\w+/finalize", "POST", "500", times=3)
    with pytest.raises(stripe.APIError):
        stripe_sync.sync_invoice(invoice.pk)
    invoice.refresh_from_db()
    # someone adds a charge to the draft in Stripe's dashboard
    double.client().v1.invoice_items.create(
        {
            "customer": invoice.tenant.stripe_customer_id,
            "invoice": invoice.stripe_invoice_id,
            "amount": 999,
            "currency": "usd",
        }
    )

    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.FAILED
    invoice.refresh_from_db()
    assert "was not finalized" in invoice.sync_error and "SyncMismatch" in invoice.sync_error
    assert double.invoice(invoice.stripe_invoice_id)["status"] == "draft"


@pytest.fixture
def open_invoice(double, plan) -> Invoice:
    return synced(double, plan)


def paid_event(double, invoice: Invoice) -> dict:
    double.transition(invoice.stripe_invoice_id, "pay")
    return event_for(double, invoice.stripe_invoice_id, "invoice.paid")


def snapshot(invoice: Invoice) -> tuple:
    invoice.refresh_from_db()
    return (invoice.status, invoice.status_changed_at, invoice.stripe_status, StripeEvent.objects.count())


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
    invoice = finalized(billed_tenant(plan), typical_usage())
    double.inject(r"/v1/invoices/in_\w+/finalize", "POST", "crash_after", times=3)
    with pytest.raises(stripe.APIConnectionError):
        stripe_sync.sync_invoice(invoice.pk)
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
def test_reconcile_finds_finalized_invoices_that_never_reached_stripe(double, plan):
    now = timezone.now()
    long_ago = now - timedelta(hours=2)
    never_queued = finalized(billed_tenant(plan), typical_usage(), now=long_ago)
    just_finalized = finalized(billed_tenant(plan), typical_usage())
    stuck = finalized(billed_tenant(plan), typical_usage(), now=long_ago + timedelta(minutes=1))
    Invoice.objects.filter(pk=stuck.pk).update(
        sync_state="pending", sync_attempted_at=now - timedelta(hours=1)
    )
    retrying = finalized(billed_tenant(plan), typical_usage(), now=long_ago)
    Invoice.objects.filter(pk=retrying.pk).update(
        sync_state="pending", sync_attempted_at=now - timedelta(minutes=2)
    )
    failed = finalized(billed_tenant(plan), typical_usage(), now=long_ago)
    Invoice.objects.filter(pk=failed.pk).update(sync_state="failed")
    invoicing.void_invoice(finalized(billed_tenant(plan), typical_usage(), now=long_ago).pk)
    invoicing.generate_invoice(billed_tenant(plan).tenant_id, MARCH)

    assert stripe_sync.invoices_to_sync(now) == [never_queued.pk, stuck.pk]
    for invoice_id in stripe_sync.invoices_to_sync(now):
        stripe_sync.sync_invoice(invoice_id)
    assert stripe_sync.invoices_to_sync(now) == []
    assert_one_faithful_copy(double, never_queued) and assert_one_faithful_copy(double, stuck)
    assert just_finalized.pk not in stripe_sync.invoices_to_sync(now + timedelta(minutes=4))
    assert just_finalized.pk in stripe_sync.invoices_to_sync(now + timedelta(minutes=6))


@pytest.mark.django_db
def test_reconcile_applies_stripe_changes_whose_webhook_never_arrived(double, plan):
    paid, uncollectible, untouched = (synced(double, plan) for _ in range(3))
    double.transition(paid.stripe_invoice_id, "pay")
    double.transition(uncollectible.stripe_invoice_id, "mark_uncollectible")
    double.inject(r"/v1/invoices/in_\w+", "GET", "500", times=1)  # the SDK retries it

    assert stripe_sync.refresh_statuses() == 2
    assert stripe_sync.refresh_statuses() == 0

    statuses = {i.pk: (i.status, i.stripe_status) for i in Invoice.objects.all()}
    assert statuses == {
        paid.pk: (Status.PAID, "paid"),
        uncollectible.pk: (Status.UNCOLLECTIBLE, "uncollectible"),
        untouched.pk: (Status.OPEN, "open"),
    }


@pytest.mark.django_db
def test_reconcile_skips_an_invoice_stripe_cannot_answer_for_and_carries_on(double, plan):
    first, second = synced(double, plan), synced(double, plan)
    double.transition(first.stripe_invoice_id, "pay")
    double.transition(second.stripe_invoice_id, "pay")
    double.inject(rf"/v1/invoices/{first.stripe_invoice_id}", "GET", "429", times=1)

    assert stripe_sync.refresh_statuses() == 1
    assert stripe_sync.refresh_statuses() == 1
    assert set(Invoice.objects.values_list("status", flat=True)) == {Status.PAID}


@pytest.fixture
def stripe_env(double, monkeypatch):
    """Settings for a worker in another process too (it reads the environment, not this process's settings).
    Requested before ``celery_worker``, so the worker starts with them."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_meterline")
    monkeypatch.setenv("STRIPE_API_BASE", double.url)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    return double


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def finalized_while_stripe_was_not_configured(settings, *args, **kwargs) -> Invoice:
    """No sync is queued on commit: as if the task was lost, for reconcile to find."""
    key, settings.STRIPE_API_KEY = settings.STRIPE_API_KEY, ""
    try:
        return finalized(*args, **kwargs)
    finally:
        settings.STRIPE_API_KEY = key


@pytest.mark.slow
def test_sync_retry_and_reconcile_through_a_real_worker(stripe_env, celery_worker, plan, settings):
    double = stripe_env
    invoice = finalized_while_stripe_was_not_configured(settings, billed_tenant(plan), typical_usage())
    # three 500s exhaust the SDK's tries: the task fails once, then Celery's backoff retry completes it
    fault = double.inject(r"/v1/invoices", "POST", "500", times=3)

    assert tasks.sync_invoice_to_stripe.delay(invoice.pk).get(timeout=60) == SyncState.SYNCED
    assert fault.fired == 3
    assert_one_faithful_copy(double, invoice)

    # the reconcile beat queues an invoice finalized while its task was lost, and applies a missed payment
    missed = finalized_while_stripe_was_not_configured(
        settings, billed_tenant(plan), typical_usage(), now=timezone.now() - timedelta(hours=1)
    )
    double.transition(invoice.stripe_invoice_id, "pay")
    # run here as beat would start it; the sync it queues goes through the broker to the worker (a task queued
    # from inside the test worker would go to the default queue, which that worker does not consume)
    result = tasks.reconcile_stripe.apply().get()

    assert result == {"queued": 1, "moved": 1}
    wait_for(lambda: Invoice.objects.get(pk=missed.pk).sync_state == SyncState.SYNCED)
    assert_one_faithful_copy(double, missed)
    invoice.refresh_from_db()
    assert invoice.status == Status.PAID

    # a sync Stripe refused, retried from the admin once the cause is fixed: the worker completes it
    refused = finalized_while_stripe_was_not_configured(settings, billed_tenant(plan), typical_usage())
    settings.STRIPE_API_KEY = "sk_live_wrong"
    assert stripe_sync.sync_invoice(refused.pk) == SyncState.FAILED
    settings.STRIPE_API_KEY = "sk_test_meterline"
    modeladmin = mock.Mock()
    retry_stripe_sync(modeladmin, RequestFactory().post("/"), Invoice.objects.filter(pk=refused.pk))
    assert modeladmin.message_user.call_args.args[1] == "Queued the Stripe sync of 1 invoice(s)."
    wait_for(lambda: Invoice.objects.get(pk=refused.pk).sync_state == SyncState.SYNCED)
    assert_one_faithful_copy(double, refused)


@pytest.mark.slow
def test_finalizing_an_invoice_queues_its_sync_and_a_worker_delivers_it(stripe_env, celery_worker, plan):
    double = stripe_env
    invoice = finalized(
        billed_tenant(plan), typical_usage()
    )  # commits: transactional test, so on_commit runs

    wait_for(lambda: Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.SYNCED, timeout=60)
    assert_one_faithful_copy(double, invoice)
