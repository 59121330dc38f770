"""Budgets: alerts go out once per threshold and period, by e-mail and as ``budget.threshold_reached`` to the
tenant's webhook endpoints subscribed to it; budget webhooks of before migrate to such an endpoint."""

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from standardwebhooks import Webhook

from billing import selectors
from notifications import webhooks
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from spend import budgets
from spend.models import BudgetAlert

pytestmark = pytest.mark.django_db


@pytest.fixture
def development(settings):
    """Local development: the receiver on loopback may be reached over http (docs/webhooks.md)."""
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOKS_ALLOW_HTTP = True


def test_budget_alerts_go_out_once_per_threshold_to_the_subscribed_endpoint(
    world, development, receiver, eager_tasks, django_capture_on_commit_callbacks
):
    tenant = world.tenants[0]
    endpoint = webhooks.create_endpoint(tenant, receiver.url(), event_types=[budgets.THRESHOLD_REACHED])
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(
        tenant, (spend / Decimal("0.9")).quantize(Decimal("0.01")), [50, 80, 100], "alerts@example.com"
    )

    with django_capture_on_commit_callbacks(execute=True):
        sent = budgets.check_budget(tenant)
    with django_capture_on_commit_callbacks(execute=True):
        again = budgets.check_budget(tenant)

    assert sorted(a.threshold for a in sent) == [50, 80] and again == []
    assert len(mail.outbox) == 2 and mail.outbox[0].to == ["alerts@example.com"]
    events = Event.objects.filter(type="budget.threshold_reached").order_by("pk")
    assert [e.data["threshold_percent"] for e in events] == [50, 80]
    assert all(e.dispatched_at for e in events)
    assert len(receiver.received) == 2
    for request in receiver.received:
        body = Webhook(endpoint.secret).verify(request.body, request.headers)
        assert body["type"] == "budget.threshold_reached"
        assert body["data"]["currency"] == tenant.currency
    assert WebhookDelivery.objects.filter(status="delivered").count() == 2


def test_an_alert_without_an_endpoint_records_its_event_and_sends_only_mail(
    world, eager_tasks, django_capture_on_commit_callbacks
):
    tenant = world.tenants[0]
    spend = selectors.current_spend(tenant).total
    budgets.save_budget(tenant, (spend / 2).quantize(Decimal("0.01")), [50], "")

    with django_capture_on_commit_callbacks(execute=True):
        sent = budgets.check_budget(tenant)

    assert [a.threshold for a in sent] == [50]
    assert Event.objects.get(type="budget.threshold_reached").dispatched_at is not None
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_budget_webhook_of_before_becomes_an_endpoint_with_the_same_key_and_its_pending_alert(world):
    """The data migration, run on rows written by the schema of before (spend 0001)."""
    tenant, other = world.tenants
    executor = MigrationExecutor(connection)
    executor.migrate([("spend", "0001_initial")])
    old = executor.loader.project_state([("spend", "0001_initial"), ("notifications", "0002_webhooks")]).apps
    OldBudget, OldAlert = old.get_model("spend", "Budget"), old.get_model("spend", "BudgetAlert")
    OldEvent = old.get_model("notifications", "Event")
    key = "ab" * 32
    OldBudget.objects.create(
        tenant_id=tenant.pk, monthly_amount=10, webhook_url="https://hooks.example.com/b", webhook_secret=key
    )
    OldBudget.objects.create(tenant_id=other.pk, monthly_amount=10)
    pending = OldAlert.objects.create(
        tenant_id=tenant.pk, period_start="2025-01-01", threshold=50, spend=6, budget_amount=10
    )
    done = OldAlert.objects.create(
        tenant_id=tenant.pk,
        period_start="2025-01-01",
        threshold=80,
        spend=8,
        budget_amount=10,
        webhook_delivered_at="2025-01-02T00:00Z",
    )
    for alert in (pending, done):
        OldEvent.objects.create(
            tenant_id=tenant.pk, type="budget.threshold_crossed", data={"alert_id": alert.pk}
        )

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.tenant_id, endpoint.url, endpoint.event_types) == (
        tenant.pk,
        "https://hooks.example.com/b",
        ["budget.threshold_reached"],
    )
    # The same HMAC key, now in the whsec_ form: a signature made with it is the old key's HMAC.
    assert base64.b64decode(endpoint.secret.removeprefix("whsec_")) == key.encode()
    signature = Webhook(endpoint.secret).sign("evt_1", datetime(2025, 1, 1, tzinfo=UTC), "{}")
    assert (
        signature.split(",")[1]
        == base64.b64encode(hmac.new(key.encode(), b"evt_1.1735689600.{}", hashlib.sha256).digest()).decode()
    )
    assert not Event.objects.filter(type="budget.threshold_crossed").exists()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.endpoint, delivery.event.data["alert_id"], delivery.status) == (
        endpoint,
        pending.pk,
        "pending",
    )
    assert BudgetAlert.objects.count() == 2
    assert json.loads(json.dumps(delivery.event.data)) == {"alert_id": pending.pk}
