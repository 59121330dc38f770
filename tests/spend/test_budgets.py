"""Budgets: alerts go out once per threshold and period, by e-mail and by a signed webhook that the outbox
hands to the delivery task once the alert has committed."""

import hashlib
import hmac
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from billing import selectors
from notifications.models import Event
from spend import budgets
from spend.models import BudgetAlert

pytestmark = pytest.mark.django_db


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers["Meterline-Signature"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    yield server
    server.shutdown()


def expected_signature(secret: str, header: str, body: bytes) -> str:
    """The documented scheme, written from its description: ``t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<body>")>``."""
    timestamp = header.split(",")[0].removeprefix("t=")
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_budget_alerts_go_out_once_per_threshold_with_a_signed_webhook(
    world, receiver, eager_tasks, django_capture_on_commit_callbacks
):
    tenant = world.tenants[0]
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(
        tenant,
        (spend / Decimal("0.9")).quantize(Decimal("0.01")),
        [50, 80, 100],
        "alerts@example.com",
        f"http://127.0.0.1:{receiver.server_port}/hook",
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
    assert len(_Receiver.received) == 2
    secret = tenant.budget.webhook_secret
    for header, body in _Receiver.received:
        assert header == expected_signature(secret, header, body)
        assert abs(int(header.split(",")[0][2:]) - time.time()) < 60
        assert json.loads(body)["tenant"] == tenant.slug
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
