"""Portal pages as a tenant user sees them: content, keys, CSV, budgets, security settings."""

import csv
import io
import json
import re
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from billing import budgets
from tenants.models import APIKey, BudgetAlert
from tests.conftest import AgentClient
from tests.factories import USER_PASSWORD, UserFactory
from tests.usage.builders import event

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(world, client):
    client.force_login(world.users[0])
    return client


def test_dashboard_shows_spend_and_charts(world, owner_client):
    page = owner_client.get("/").content.decode()
    assert "Spend this period" in page and page.count('class="bar"') >= 3
    assert world.tenants[1].name not in page


def test_created_key_is_shown_once_and_works_and_revoking_it_refuses_it(world, owner_client):
    response = owner_client.post("/keys/new/", {"agent": world.agents[0].pk, "label": "ci"}, follow=True)
    page = response.content.decode()
    key = page.split('id="new-key-value">')[1].split("<")[0]
    assert key.startswith("mlk_live_")
    assert key not in owner_client.get("/agents/").content.decode()  # shown once
    assert AgentClient(key).post("/api/v1/events", {"events": [event("k1")]}).status_code == 200

    api_key = APIKey.objects.get(label="ci")
    owner_client.post(f"/keys/{api_key.pk}/revoke/")
    assert AgentClient(key).post("/api/v1/events", {"events": [event("k2")]}).status_code == 401


def test_csv_export_streams_rows_and_neutralises_formulas(world, owner_client):
    AgentClient(world.keys[0]).post(
        "/api/v1/events", {"events": [event("f1", session_id="=cmd|' /C calc'!A0")]}
    )
    response = owner_client.get("/usage.csv")
    assert response.status_code == 200 and response.streaming
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["hour_start", "agent", "session_id", "meter"]
    assert any(r[2] == "'=cmd|' /C calc'!A0" for r in rows[1:])
    assert {r[3] for r in rows[1:]} >= {"llm_input_text_tokens", "tts_characters"}


def test_usage_filters_are_validated_and_bad_ones_never_500(world, owner_client):
    assert owner_client.get("/usage/?start=2026-13-45").status_code == 200
    assert owner_client.get("/usage/?agent=not-a-number").status_code == 200
    assert owner_client.get("/usage.csv?start=2026-05-01&end=2026-04-01").status_code == 400
    page = owner_client.get("/usage/?group_by=agent").content.decode()
    assert world.agents[0].name in page


@pytest.mark.parametrize(
    ("group_by", "head", "first_cell"),
    [
        ("meter", None, None),
        ("agent", "Agent", "agent"),
        ("day", "Day", "day"),
        ("session", "Session", "link"),
    ],
)
def test_usage_table_has_one_cell_per_column_and_the_grouping_first(
    world, owner_client, group_by, head, first_cell
):
    page = owner_client.get(f"/usage/?group_by={group_by}").content.decode()
    table = page.split('data-testid="usage-table">')[1].split("</table>")[0]
    header = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table.split("</thead>")[0])
    body = table.split("<tbody>")[1].split("</tbody>")[0]
    rows = [re.findall(r"<td(?:\s[^>]*)?>(.*?)</td>", row, re.S) for row in body.split("</tr>")[:-1]]
    assert header[: 1 if head else 0] == ([head] if head else [])
    assert header[-6:] == ["Meter", "Provider", "Model", "Quantity", "Events", "Cost"]
    assert rows and all(len(cells) == len(header) for cells in rows)
    day = timezone.now().astimezone(ZoneInfo(world.tenants[0].timezone)).date()
    expected = {
        "agent": world.agents[0].name,
        "day": f"{day:%a} {day.day} {day:%b}",
        "link": '<a href="/sessions/call-0/">call-0</a>',
    }.get(first_cell)
    if expected:
        assert {cells[0] for cells in rows} == {expected}
    assert "<code>llm_input_text_tokens</code>" in {cells[-6] for cells in rows}


@pytest.mark.parametrize("group_by", ["meter", "session"])
def test_usage_table_escapes_what_agents_sent(world, owner_client, group_by):
    AgentClient(world.keys[0]).post(
        "/api/v1/events",
        {"events": [event("x1", session_id="<i>s</i>", provider="<b>p</b>", model="m&<")]},
    )
    page = owner_client.get(f"/usage/?group_by={group_by}").content.decode()
    assert "<b>p</b>" not in page and "<i>s</i>" not in page and "m&<" not in page
    assert "&lt;b&gt;p&lt;/b&gt;" in page and "m&amp;&lt;" in page
    if group_by == "session":
        assert '<a href="/sessions/%3Ci%3Es%3C/i%3E/">&lt;i&gt;s&lt;/i&gt;</a>' in page


def test_invoice_pages_and_pdf(world, owner_client):
    invoice = world.invoices[0]
    assert invoice.number in owner_client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert "window.print" in owner_client.get(f"/invoices/{invoice.pk}/print/").content.decode()
    pdf = owner_client.get(f"/invoices/{invoice.pk}/pdf/")
    assert pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


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


def test_login_is_throttled_after_repeated_failures(db):
    user = UserFactory(username="alice")
    client = Client()
    for _ in range(5):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    response = client.post("/login/", {"username": "alice", "password": USER_PASSWORD})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    assert user.pk


def test_portal_forms_enforce_csrf(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users[0])
    key = APIKey.objects.get(tenant=world.tenants[0])
    assert client.post(f"/keys/{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None
