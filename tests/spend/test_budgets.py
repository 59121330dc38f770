"""Budgets: alerts go out once per threshold and period, by e-mail and by a signed webhook that the outbox
hands to the delivery task once the alert has committed."""

import hashlib
import hmac
import json
import socket
import time
from decimal import Decimal

import pytest
from django.core import mail

from billing import selectors
from notifications.models import Event
from spend import budgets
from spend.models import BudgetAlert
from tests.notifications.receiver import Answer

pytestmark = pytest.mark.django_db


def expected_signature(secret: str, header: str, body: bytes) -> str:
    """The documented scheme, written from its description: ``t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<body>")>``."""
    timestamp = header.split(",")[0].removeprefix("t=")
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@pytest.fixture
def development(settings):
    """Local development: the receiver on loopback may be reached (docs/decisions/008-outbound-requests.md)."""
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True


def test_budget_alerts_go_out_once_per_threshold_with_a_signed_webhook(
    world, development, receiver, eager_tasks, django_capture_on_commit_callbacks
):
    tenant = world.tenants[0]
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(
        tenant,
        (spend / Decimal("0.9")).quantize(Decimal("0.01")),
        [50, 80, 100],
        "alerts@example.com",
        receiver.url(),
    )

    with django_capture_on_commit_callbacks(execute=True):
        sent = budgets.check_budget(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        again = budgets.check_budget(tenant)

    assert sorted(a.threshold for a in sent) == [50, 80] and again == []
    assert len(mail.outbox) == 2 and mail.outbox[0].to == ["alerts@example.com"]
    events = Event.objects.filter(type="budget.threshold_crossed").order_by("pk")
    assert [e.data["threshold_percent"] for e in events] == [50, 80]
    assert all(e.dispatched_at for e in events)
    assert len(receiver.received) == 2
    secret = tenant.budget.webhook_secret
    for request in receiver.received:
        header = request.headers["Meterline-Signature"]
        assert header == expected_signature(secret, header, request.body)
        assert abs(int(header.split(",")[0][2:]) - time.time()) < 60
        assert json.loads(request.body)["tenant"] == tenant.slug
    assert BudgetAlert.objects.filter(webhook_delivered_at__isnull=False).count() == 2


def test_an_alert_without_a_webhook_records_its_event_and_sends_only_mail(
    world, eager_tasks, django_capture_on_commit_callbacks
):
    tenant = world.tenants[0]
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(tenant, (spend / 2).quantize(Decimal("0.01")), [50], "", "")

    with django_capture_on_commit_callbacks(execute=True):
        sent = budgets.check_budget(tenant)

    assert [a.threshold for a in sent] == [50]
    assert Event.objects.get(type="budget.threshold_crossed").dispatched_at is not None
    assert BudgetAlert.objects.get().webhook_delivered_at is None


def alert_delivered_to(tenant, url, django_capture_on_commit_callbacks) -> BudgetAlert:
    """One alert (50 %) checked and handed to the webhook delivery; the task's retries run at once (eager)."""
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(tenant, (spend / Decimal("0.6")).quantize(Decimal("0.01")), [50], "", url)
    with django_capture_on_commit_callbacks(execute=True):
        budgets.check_budget(tenant)
    return BudgetAlert.objects.get(tenant=tenant)


@pytest.mark.parametrize("answer", [Answer(500, b"upstream redis:6379 refused; nginx/1.25"), Answer(302)])
def test_a_failed_delivery_stores_only_the_status_for_the_tenant_to_see(
    world, development, receiver, eager_tasks, django_capture_on_commit_callbacks, answer
):
    receiver.answer = answer

    alert = alert_delivered_to(world.tenants[0], receiver.url(), django_capture_on_commit_callbacks)

    assert (alert.webhook_delivered_at, alert.webhook_error) == (None, f"HTTP {answer.status}")
    assert receiver.received  # it was tried (and retried), and never marked delivered


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433"])
def test_without_the_development_setting_a_loopback_webhook_is_refused_and_nothing_is_sent(
    world, settings, receiver, eager_tasks, django_capture_on_commit_callbacks, host
):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_PORTS = [80, 443, receiver.port]  # only the address rule stands in the way

    alert = alert_delivered_to(world.tenants[0], receiver.url(host), django_capture_on_commit_callbacks)

    assert (alert.webhook_delivered_at, alert.webhook_error) == (None, "could not connect")
    assert receiver.received == []


def test_a_closed_port_is_stored_as_could_not_connect(
    world, development, eager_tasks, django_capture_on_commit_callbacks
):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    alert = alert_delivered_to(
        world.tenants[0], f"http://127.0.0.1:{port}/", django_capture_on_commit_callbacks
    )

    assert alert.webhook_error == "could not connect"
