"""The budget page: a saved budget's alerts go out once per threshold, by email and signed webhook."""

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

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


def test_budget_alerts_go_out_once_per_threshold_with_a_signed_webhook(world, owner_client, settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    tenant = world.tenants[0]
    spend = budgets.selectors.current_spend(tenant).total
    response = owner_client.post(
        "/budget/",
        {
            "monthly_amount": str((spend / Decimal("0.9")).quantize(Decimal("0.01"))),
            "thresholds": ["50", "80", "100"],
            "alert_email": "alerts@example.com",
            "webhook_url": f"http://127.0.0.1:{server.server_port}/hook",
        },
    )
    assert response.status_code == 302

    sent = budgets.check_budget(tenant)
    for alert in sent:  # the webhook task, run here as the worker would
        budgets.deliver_webhook(alert.pk)
    again = budgets.check_budget(tenant)
    server.shutdown()

    assert sorted(a.threshold for a in sent) == [50, 80] and again == []
    assert len(mail.outbox) == 2 and mail.outbox[0].to == ["alerts@example.com"]
    assert len(_Receiver.received) == 2
    secret = tenant.budget.webhook_secret
    for header, body in _Receiver.received:
        timestamp = int(header.split(",")[0][2:])
        assert header == budgets.sign(secret, body, timestamp)
        assert json.loads(body)["tenant"] == tenant.slug
    assert BudgetAlert.objects.filter(webhook_delivered_at__isnull=False).count() == 2
