"""Tenant webhooks end to end: events recorded by the domain reach a real receiver on loopback, signed the
Standard Webhooks way, once each, across failing attempts and a worker killed mid-send; and the rules around
them (secret roll, disabling after three days, concurrency, SSRF)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from billing import credit_notes, invoicing, periods, selectors
from billing.pricing import to_minor_units
from notifications import outbox, tasks, webhooks
from notifications.models import WebhookDelivery
from payments import stripe_sync
from spend import budgets
from tenants.models import Membership
from tests.conftest import AgentClient
from tests.usage.builders import event as usage_event


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """A receiver on loopback: records every request; ``fail_first`` requests of each webhook-id answer 500;
    a webhook-id in ``hold`` is kept waiting (the sender is killed meanwhile)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[Request] = []
        self.fail_first = fail_first
        self.hold: set[str] = set()
        self.released = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests.append(Request(headers, body))
                    seen = sum(
                        1 for r in receiver.requests if r.headers["webhook-id"] == headers["webhook-id"]
                    )
                if headers["webhook-id"] in receiver.hold:
                    receiver.hold.discard(headers["webhook-id"])
                    receiver.released.wait(30)
                    return
                status = 500 if seen <= receiver.fail_first else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def by_id(self) -> dict[str, list[Request]]:
        grouped: dict[str, list[Request]] = {}
        for request in self.requests:
            grouped.setdefault(request.headers["webhook-id"], []).append(request)
        return grouped


def spec_signatures(secret: str, headers: dict[str, str], body: bytes) -> tuple[set[str], str]:
    """Written from the Standard Webhooks specification, not from the library: HMAC-SHA256 keyed with the
    base64-decoded part after ``whsec_``, over ``id.timestamp.body``, base64-encoded, prefixed ``v1,``.
    Returns the signatures sent and the one this secret makes."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return set(headers["webhook-signature"].split(" ")), expected


def assert_signed_by(secret: str, request: Request) -> None:
    Webhook(secret).verify(request.body, request.headers)  # raises if no signature matches
    sent, expected = spec_signatures(secret, request.headers, request.body)
    assert expected in sent
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300


@pytest.fixture
def development(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOKS_ALLOW_HTTP = True


@pytest.fixture
def hooks():
    receiver = WebhookReceiver(fail_first=2)
    yield receiver
    receiver.close()


def drive_until_done(start, limit: int = 30):
    """Be the beat sweep and the worker with the clock moved forward: attempt every due delivery until none
    is pending (the waits between attempts pass instantly)."""
    now = start
    for _ in range(limit):
        pending = WebhookDelivery.objects.filter(status="pending")
        if not pending.exists():
            return now
        now = max(now, *(d.next_attempt_at for d in pending)) + timedelta(seconds=31) + webhooks.LEASE
        for delivery_id in webhooks.due_deliveries(now):
            tasks.deliver_webhook(delivery_id, now=now.isoformat())
    raise AssertionError("deliveries still pending")


def kill_a_worker_mid_send(delivery_id: int, receiver: WebhookReceiver) -> None:
    """A separate process runs the delivery task against the test database; the receiver holds the request
    until the process has been killed (SIGKILL: no cleanup, no ack)."""
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    receiver.hold.add(delivery.webhook_id)
    before = len(receiver.requests)
    db = connection.settings_dict
    env = dict(
        os.environ,
        DATABASE_URL=f"postgresql://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        DEBUG="1",
        OUTBOUND_ALLOW_PRIVATE_NETWORKS="1",
        WEBHOOKS_ALLOW_HTTP="1",
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    code = (
        "import django; django.setup(); from notifications.tasks import deliver_webhook; "
        f"deliver_webhook({delivery_id})"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 60
    while not any(r.headers["webhook-id"] == delivery.webhook_id for r in receiver.requests[before:]):
        assert worker.poll() is None and time.monotonic() < deadline, "the worker never sent"
        time.sleep(0.05)
    worker.kill()
    worker.wait(10)
    receiver.released.set()


def stripe_event(event_id: str, event_type: str, invoice) -> dict:
    return {
        "id": event_id,
        "type": event_type,
        "data": {
            "object": {
                "id": invoice.stripe_invoice_id,
                "customer": invoice.tenant.stripe_customer_id,
                "currency": invoice.currency.lower(),
                "total": to_minor_units(invoice.total, invoice.currency),
            }
        },
    }


def test_every_event_type_reaches_a_real_receiver_once_signed_across_failures_and_a_killed_worker(
    transactional_db, world, development, hooks, eager_tasks
):
    tenant = world.tenants[0]
    endpoint = webhooks.create_endpoint(tenant, hooks.url, "all events")
    other_tenant = webhooks.create_endpoint(world.tenants[1], hooks.url, "the other tenant's")
    start, _ = invoicing.current_period(tenant)

    # invoice.created, invoice.finalized, invoice.voided
    upcoming = invoicing.generate_invoice(tenant.pk, periods.next_month(start))
    invoicing.finalize_invoice(upcoming.pk, force=True)
    invoicing.void_invoice(upcoming.pk)
    # invoice.payment_failed, invoice.marked_uncollectible, then invoice.paid, as Stripe reports them; a
    # redelivered Stripe event adds nothing
    paid = world.invoices[0]
    type(tenant).objects.filter(pk=tenant.pk).update(stripe_customer_id="cus_test")
    type(paid).objects.filter(pk=paid.pk).update(stripe_invoice_id="in_paid")
    paid.refresh_from_db()
    stripe_sync.process_event(stripe_event("evt_s1", "invoice.payment_failed", paid))
    stripe_sync.process_event(stripe_event("evt_s1", "invoice.payment_failed", paid))
    stripe_sync.apply_stripe_status(paid.pk, "uncollectible")
    stripe_sync.process_event(stripe_event("evt_s2", "invoice.paid", paid))
    # credit_note.created: part of the paid invoice refunded
    fee = paid.lines.get(kind="base_fee")
    credit_notes.issue(
        paid.pk,
        outcome="refund",
        reason="order_change",
        lines=[credit_notes.Request(fee.pk, amount=Decimal(1))],
    )
    # budget.threshold_reached (the e-mail still goes out too)
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(tenant, (spend / Decimal("0.6")).quantize(Decimal("0.01")), [50], "a@example.com")
    budgets.check_budget(tenant)
    # usage.conflict_detected: a resend with the same id and another payload
    agent = AgentClient(world.keys[0])
    agent.post("/api/v1/events", {"events": [usage_event("dup")]})
    agent.post("/api/v1/events", {"events": [usage_event("dup", usage={"llm_input_text_tokens": 7})]})
    # usage.corrected: the agent retracts that event
    assert agent.post("/api/v1/events/dup/retract", {"reason": "sent by a test"}).status_code == 200
    # credit.granted, credit.expired (an expiry posted once due), authorization.denied (prepaid-hard, no credit)
    from billing import credits
    from spend.models import SpendPolicy

    short = credits.grant(
        tenant, "1.00", source="promotional", reason="trial", expires_at=timezone.now() + timedelta(seconds=1)
    )
    credits.expire_due(tenant, short.expires_at + timedelta(seconds=1))
    SpendPolicy.objects.update_or_create(tenant=tenant, defaults={"policy": "prepaid-hard"})
    assert (
        agent.post("/api/v1/authorizations", {"session_id": "denied", "amount": "1000.00"}).status_code == 402
    )
    # balance.low then balance.depleted, each once per fall; balance.recharged (its credit is a second
    # credit.granted) and balance.recharge_failed, from top-ups
    from billing import topups
    from spend import control

    SpendPolicy.objects.filter(tenant=tenant).update(low_balance_threshold=Decimal("10.00"))
    short_of_zero = -control.balance(tenant).available
    bought = topups.request(tenant, max(short_of_zero + Decimal("1.00"), Decimal("5.00")))
    topups.credit(bought.pk, "in_topup")
    control.check(tenant)
    assert 0 < control.balance(tenant).available < Decimal("10.00")
    credits.reverse(bought.grant, None, reason="taken back to test balance.depleted")
    control.check(tenant)
    control.check(tenant)
    failed = topups.request(tenant, "5.00", automatic=True)
    topups.fail(failed.pk, "the payment was declined")
    # ping, on demand
    tasks.queue([webhooks.send_ping(endpoint)])
    # a change that rolls back records nothing, so nothing is sent for it
    with pytest.raises(RuntimeError), transaction.atomic():
        invoicing.generate_invoice(tenant.pk, periods.next_month(periods.next_month(start)))
        raise RuntimeError("rolled back")

    # One delivery is in flight when its worker is killed: the sweep sends it again after the lease.
    victim = WebhookDelivery.objects.filter(endpoint=endpoint, status="pending").order_by("pk").first()
    victim.attempts, victim.next_attempt_at = 0, timezone.now()
    victim.save()
    kill_a_worker_mid_send(victim.pk, hooks)
    victim.refresh_from_db()
    assert victim.status == "pending" and victim.sending_since is not None
    outbox.dispatch_pending(timezone.now() + timedelta(minutes=5))  # nothing left undispatched
    drive_until_done(timezone.now())

    received = hooks.by_id()
    bodies = {webhook_id: json.loads(requests[0].body) for webhook_id, requests in received.items()}
    assert sorted(b["type"] for b in bodies.values()) == sorted(
        [*webhooks.EVENT_TYPES, "ping", "credit.granted"]
    )
    endpoint.refresh_from_db()
    for requests in received.values():
        assert len(requests) >= 3, "two failed attempts, then the one that succeeded"
        assert len({r.body for r in requests}) == 1, "every attempt sends the same bytes"
        for request in requests:
            assert_signed_by(endpoint.secret, request)
    assert victim.webhook_id in received
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}
    assert not other_tenant.deliveries.exists()
    voided = [b for b in bodies.values() if b["type"] == "invoice.voided"]
    assert [v["data"]["invoice_id"] for v in voided] == [upcoming.pk]
    assert all(set(b) == {"type", "timestamp", "data"} for b in bodies.values())
    assert mail.outbox and mail.outbox[0].to == ["a@example.com"]


def an_event(tenant, event_type: str = "invoice.paid") -> WebhookDelivery:
    """An event of ``tenant`` dispatched through the outbox, and the delivery it made."""
    event = outbox.record(tenant.pk, event_type, {"invoice_id": 1})
    outbox.dispatch(event.pk)
    return WebhookDelivery.objects.get(event=event)


@pytest.mark.django_db
def test_during_a_roll_both_secrets_sign_for_24_hours_then_only_the_new_one(tenant, development, hooks):
    hooks.fail_first = 0
    endpoint = webhooks.create_endpoint(tenant, hooks.url)
    old = endpoint.secret
    rolled_at = timezone.now()
    new = webhooks.roll_secret(endpoint, now=rolled_at)
    assert new.startswith("whsec_") and new != old and len(base64.b64decode(new[6:])) == 32

    webhooks.attempt_delivery(an_event(tenant).pk, now=rolled_at + timedelta(hours=23))
    webhooks.attempt_delivery(an_event(tenant).pk, now=rolled_at + timedelta(hours=25))

    during, after = hooks.requests
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert_signed_by(old, during)
    assert_signed_by(new, during)
    assert_signed_by(new, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)
    sent, expected = spec_signatures(old, after.headers, after.body)
    assert expected not in sent


@pytest.mark.django_db
def test_an_endpoint_failing_for_three_days_is_disabled_and_its_owners_are_told(
    world, development, hooks, django_capture_on_commit_callbacks
):
    hooks.fail_first = 1000
    tenant = world.tenants[0]
    endpoint = webhooks.create_endpoint(tenant, hooks.url)
    first = an_event(tenant)
    start = timezone.now()

    clock, states = start, []
    with django_capture_on_commit_callbacks(execute=True):
        while (state := tasks.deliver_webhook(first.pk, now=clock.isoformat())) == "retry":
            states.append(state)
            first.refresh_from_db()
            clock = first.next_attempt_at
    endpoint.refresh_from_db()
    first.refresh_from_db()

    assert state == "endpoint disabled"
    assert not endpoint.is_enabled and "three days" in endpoint.disabled_reason
    assert clock - start >= sum(webhooks.RETRY_SCHEDULE, timedelta()) * (1 - webhooks.JITTER)
    waits = len(states)
    assert 8 <= waits <= len(webhooks.RETRY_SCHEDULE), "about three days of the schedule"
    assert first.status in ("failed", "cancelled") and first.attempts == waits + 1
    owners = list(
        Membership.objects.filter(tenant=tenant, role="owner").values_list("user__email", flat=True)
    )
    assert (
        len(mail.outbox) == 1 and mail.outbox[0].to == sorted(owners) and endpoint.url in mail.outbox[0].body
    )
    assert len(hooks.requests) == waits + 1
    assert not WebhookDelivery.objects.filter(event=an_event_or_none(tenant)).exists()


def an_event_or_none(tenant):
    """An event recorded now: a disabled endpoint gets no delivery for it."""
    event = outbox.record(tenant.pk, "invoice.paid", {"invoice_id": 2})
    outbox.dispatch(event.pk)
    return event


@pytest.mark.django_db
def test_a_success_clears_the_failing_clock(tenant, development, hooks):
    hooks.fail_first = 1
    endpoint = webhooks.create_endpoint(tenant, hooks.url)
    delivery = an_event(tenant)
    now = timezone.now()
    assert webhooks.attempt_delivery(delivery.pk, now=now).state == "retry"
    endpoint.refresh_from_db()
    assert endpoint.failing_since == now
    delivery.refresh_from_db()
    assert webhooks.attempt_delivery(delivery.pk, now=delivery.next_attempt_at).state == "delivered"
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None
    assert webhooks.attempt_delivery(delivery.pk, now=now + timedelta(days=1)).state == "delivered"
    assert len(hooks.requests) == 2, "a delivered delivery is never sent again"


@pytest.mark.django_db
def test_deliveries_in_flight_per_endpoint_are_capped(tenant, development, hooks, settings):
    settings.WEBHOOKS_MAX_CONCURRENT_PER_ENDPOINT = 2
    hooks.fail_first = 0
    webhooks.create_endpoint(tenant, hooks.url)
    now = timezone.now()
    held = [an_event(tenant) for _ in range(3)]
    WebhookDelivery.objects.filter(pk__in=[d.pk for d in held[:2]]).update(sending_since=now)

    outcome = webhooks.attempt_delivery(held[2].pk, now=now)
    assert outcome.state == "busy" and outcome.retry_in == webhooks.BUSY_RETRY
    assert hooks.requests == []
    # a lease older than LEASE belongs to a dead worker and no longer counts
    later = now + webhooks.LEASE + timedelta(seconds=1)
    assert webhooks.attempt_delivery(held[2].pk, now=later).state == "delivered"
    assert sorted(webhooks.due_deliveries(later + timedelta(minutes=1))) == sorted(d.pk for d in held[:2])


@pytest.mark.django_db
def test_every_event_is_fanned_out_once_to_the_subscribed_enabled_endpoints(tenant, development, hooks):
    everything = webhooks.create_endpoint(tenant, hooks.url)
    budget_only = webhooks.create_endpoint(tenant, hooks.url, event_types=["budget.threshold_reached"])
    disabled = webhooks.create_endpoint(tenant, hooks.url)
    webhooks.set_enabled(disabled, False)
    event = outbox.record(tenant.pk, "invoice.paid", {"invoice_id": 1})

    first = webhooks.fan_out(event)
    assert webhooks.fan_out(event) == first  # a second dispatch adds nothing
    assert set(WebhookDelivery.objects.values_list("endpoint", flat=True)) == {everything.pk}
    budget_event = outbox.record(tenant.pk, "budget.threshold_reached", {"alert_id": 1})
    webhooks.fan_out(budget_event)
    assert set(budget_event.deliveries.values_list("endpoint", flat=True)) == {everything.pk, budget_only.pk}
    assert webhooks.fan_out(outbox.record(tenant.pk, "internal.only", {})) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hooks",
        "https://10.0.0.7/hooks",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://localhost/hooks",
    ],
)
def test_a_private_target_is_refused_and_shown_as_could_not_connect(tenant, settings, url, fake_dns):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.WEBHOOKS_ALLOW_HTTP = True
    fake_dns.names["localhost"] = ["127.0.0.1"]
    webhooks.create_endpoint(tenant, url)

    delivery = an_event(tenant)
    assert webhooks.attempt_delivery(delivery.pk).state == "retry"
    delivery.refresh_from_db()
    assert (delivery.last_error, delivery.last_status_code) == ("could not connect", None)
    assert webhooks.url_problem(url) is not None


@pytest.mark.django_db
def test_http_is_refused_unless_the_development_setting_allows_it(tenant, settings, hooks):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOKS_ALLOW_HTTP = False
    webhooks.create_endpoint(tenant, hooks.url)
    assert webhooks.url_problem(hooks.url) == "webhook URLs must use https"
    delivery = an_event(tenant)
    assert webhooks.attempt_delivery(delivery.pk).state == "retry"
    assert hooks.requests == []
