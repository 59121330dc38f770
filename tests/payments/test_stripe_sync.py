"""Finalized invoices pushed to Stripe and reconciled (DESIGN §7), through the real ``stripe`` SDK over real HTTP
against the Stripe test double on a loopback port (tests/stripe_double)."""

from __future__ import annotations

import random
import time
from datetime import date, timedelta
from decimal import Decimal
from unittest import mock

import pytest
import stripe
from django.contrib import messages
from django.utils import timezone

from billing import invoicing
from billing.models import Invoice
from billing.pricing import to_minor_units
from payments import stripe_sync, tasks
from payments.admin import retry_stripe_sync
from payments.models import StripeEvent
from tests import livekit_samples as samples
from tests.billing.builders import M, default_prices, make_plan, store, subscribe
from tests.payments.stripe_world import (
    APRIL,
    MARCH,
    Status,
    SyncState,
    assert_one_faithful_copy,
    at,
    billed_tenant,
    deliver,
    event_for,
    finalized,
    interrupted_at_finalize,
    stripe_copies,
    synced,
    typical_usage,
)
from tests.stripe_double import StripeDouble


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
    invoice = interrupted_at_finalize(double, plan, "500", stripe.APIError)
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
