"""One spend check (decision 018): budgets and the prepaid balance's alerts, queued by ingest and authorizations
themselves, each alert once per fall. Amounts: a $10 base fee and $0.01 a TTS character."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core import mail

from billing import credits, invoicing
from notifications.models import Event
from spend import budgets, control
from spend.models import BudgetAlert, SpendPolicy
from tests.billing.builders import make_plan, subscribe
from tests.usage.builders import event

pytestmark = pytest.mark.django_db
TTS = [{"meter_id": "tts_characters", "unit_amount": Decimal("0.01"), "unit_size": Decimal(1)}]


@pytest.fixture
def priced(tenant):
    subscribe(tenant, make_plan(base_fee="10.00", prices=TTS), starts_on=invoicing.current_period(tenant)[0])
    return tenant


@pytest.fixture
def committed(django_capture_on_commit_callbacks, eager_tasks, settings):
    """Run an action as a request commits: after-commit callbacks (the queued check) run, tasks at once, and
    every trigger checks (no debounce window: eager tasks cannot wait for it)."""
    settings.SPEND_CHECK_DELAY_SECONDS = 0

    def run(action, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return action(*args, **kwargs)

    return run


def spend_tts(agent_client, committed, event_id: str, chars: int):
    body = {"events": [event(event_id, usage={"tts_characters": chars})]}
    response = committed(agent_client.post, "/api/v1/events", body)
    assert response.json()["accepted"] == 1


def balance_events(tenant) -> list[tuple[str, str]]:
    rows = Event.objects.filter(tenant=tenant, type__startswith="balance.").order_by("id")
    return [(e.type, e.data["available"]) for e in rows]


def test_an_ingested_batch_that_crosses_a_budget_threshold_alerts_without_waiting_for_the_beat(
    agent_client, priced, committed
):
    budgets.save_budget(priced, Decimal("40.00"), [50, 80, 100], "ops@acme.test")
    spend_tts(agent_client, committed, "a", 500)  # 10 + 5 = 15 of 40: below 50 %
    assert not BudgetAlert.objects.exists()
    spend_tts(agent_client, committed, "b", 1000)  # 10 + 15 = 25: 62.5 %
    assert [a.threshold for a in BudgetAlert.objects.all()] == [50]
    assert len(mail.outbox) == 1


def test_the_balance_is_announced_low_then_depleted_once_per_fall_and_again_after_a_recovery(
    agent_client, priced, committed
):
    SpendPolicy.objects.create(tenant=priced, policy="prepaid-soft", low_balance_threshold=Decimal("20.00"))
    committed(credits.grant, priced, "40.00", source="purchased", reason="first")  # 30 available
    assert balance_events(priced) == []

    spend_tts(agent_client, committed, "a", 1500)  # 15 available: low
    spend_tts(agent_client, committed, "b", 100)  # 14: still low, not announced again
    spend_tts(agent_client, committed, "c", 1500)  # −1: depleted (usage is a fact: accepted all the same)
    for _ in range(3):
        control.check(priced)
    assert balance_events(priced) == [("balance.low", "15.00"), ("balance.depleted", "-1.00")]
    assert SpendPolicy.objects.get(tenant=priced).balance_state == "depleted"

    committed(credits.grant, priced, "50.00", source="purchased", reason="top-up")  # 49: recovered, silently
    assert SpendPolicy.objects.get(tenant=priced).balance_state == "ok"
    spend_tts(agent_client, committed, "d", 3000)  # 19: low again, announced again
    assert balance_events(priced)[2:] == [("balance.low", "19.00")]


def test_a_hold_that_brings_the_balance_low_is_announced(agent_client, priced, committed):
    SpendPolicy.objects.create(tenant=priced, policy="prepaid-hard", low_balance_threshold=Decimal("20.00"))
    committed(credits.grant, priced, "40.00", source="purchased", reason="first")  # 30 available
    response = committed(agent_client.post, "/api/v1/authorizations", {"session_id": "s", "amount": "12.00"})
    assert response.status_code == 201
    assert balance_events(priced) == [("balance.low", "18.00")]


def test_postpaid_tenants_get_no_balance_events(agent_client, priced, committed):
    SpendPolicy.objects.create(tenant=priced, policy="postpaid", low_balance_threshold=Decimal("20.00"))
    spend_tts(agent_client, committed, "a", 5000)
    assert control.check(priced).balance_state is None
    assert balance_events(priced) == []


def test_a_burst_of_triggers_queues_one_check_in_the_window(
    priced, django_capture_on_commit_callbacks, settings
):
    """Production's window: the first trigger queues a check to run two seconds after its commit; the others
    within the window queue nothing (that check sees their commits); the beat is the five-minute safety net."""
    from config.celery import app
    from spend import tasks

    settings.SPEND_CHECK_DELAY_SECONDS = 2
    budgets.save_budget(priced, Decimal("40.00"), [50], "")
    with django_capture_on_commit_callbacks() as queued:
        for _ in range(5):
            tasks.queue_check(priced)
    assert len(queued) == 1
    assert app.conf.beat_schedule["check-spend"]["schedule"] == 300
