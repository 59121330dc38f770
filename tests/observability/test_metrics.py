"""GET /metrics over HTTP: protected by a bearer token, and every metric moves by exactly what happened
(docs/decisions/009-observability.md)."""

from __future__ import annotations

import base64

import pytest
from django.test import Client

from notifications import outbox
from payments import tasks as payment_tasks
from payments.models import Invoice
from tests.observability.conftest import TOKEN, value
from tests.payments.stripe_world import billed_tenant, finalized, typical_usage
from tests.usage.builders import event
from usage import tasks as usage_tasks
from usage.models import AgentRollup

pytestmark = pytest.mark.django_db


def test_without_a_token_setting_there_is_no_metrics_endpoint(settings):
    settings.METRICS_TOKEN = ""
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer "}, {"HTTP_AUTHORIZATION": "Bearer anything"}):
        assert Client().get("/metrics", **headers).status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Token {TOKEN}",
        "Basic " + base64.b64encode(f"prometheus:{TOKEN}".encode()).decode(),
    ],
)
def test_a_scrape_without_the_right_bearer_token_is_refused_with_401(metrics_token, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = Client().get("/metrics", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"meterline_" not in response.content


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_token_gets_the_prometheus_text_format(scrape, scheme):
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"{scheme} {TOKEN}")
    assert response.status_code == 200
    assert "# TYPE meterline_outbox_pending_events gauge" in response.content.decode()
    assert "no-store" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


@pytest.mark.parametrize(
    ("new", "resent", "conflicting"),
    [(3, 0, 0), (0, 3, 0), (0, 0, 2), (2, 2, 1), (1, 4, 3)],
)
def test_ingest_counters_move_by_exactly_the_batch_s_new_resent_and_conflicting_events(
    agent_client, scrape, new, resent, conflicting
):
    """The test knows which events it sends again and which it changes: the counters must agree with that,
    not with the response."""
    earlier = [event(f"earlier-{n}") for n in range(resent + conflicting)]
    if earlier:
        assert agent_client.post("/api/v1/events", {"events": earlier}).status_code == 200
    changed = [dict(e, usage={"llm_input_text_tokens": 1}) for e in earlier[resent:]]  # same id, other usage
    batch = earlier[:resent] + changed + [event(f"new-{n}") for n in range(new)]
    before = scrape()

    response = agent_client.post("/api/v1/events", {"events": batch})

    after = scrape()
    assert response.status_code == 200

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    events = "meterline_ingest_events_total"
    assert moved(events, endpoint="api-events", outcome="accepted") == new
    assert moved(events, endpoint="api-events", outcome="duplicate") == resent
    assert moved(events, endpoint="api-events", outcome="conflict") == conflicting
    requests = "meterline_http_requests_total"
    assert moved(requests, endpoint="api-events", method="POST", status="200") == 1
    assert moved("meterline_http_request_duration_seconds_count", endpoint="api-events") == 1
    assert moved("meterline_http_request_duration_seconds_sum", endpoint="api-events") > 0


def test_a_refused_batch_counts_a_request_and_no_event(agent_client, scrape):
    before = scrape()
    response = agent_client.post("/api/v1/events", {"events": [event("ok"), event("bad", usage={})]})
    after = scrape()
    assert response.status_code in (400, 422)
    assert value(after, "meterline_ingest_events_total") == value(before, "meterline_ingest_events_total")
    status = str(response.status_code)
    assert value(after, "meterline_http_requests_total", endpoint="api-events", status=status) == (
        value(before, "meterline_http_requests_total", endpoint="api-events", status=status) + 1
    )


def test_an_unknown_path_is_counted_without_minting_a_series_per_path(client, scrape):
    before = scrape()
    for n in range(3):
        assert client.get(f"/no-such-page-{n}/").status_code == 404
    client.generic("BREW", "/no-such-page/")
    after = scrape()
    assert value(after, "meterline_http_requests_total", endpoint="unmatched", status="404") == (
        value(before, "meterline_http_requests_total", endpoint="unmatched", status="404") + 4
    )
    assert "no-such-page" not in after and "BREW" not in after


def test_task_runs_move_the_outcome_counter_by_task_name(eager_tasks, tenant, scrape):
    name = usage_tasks.verify_rollups.name
    before = scrape()
    for _ in range(2):
        usage_tasks.verify_rollups.delay(tenant.pk)
    failed = payment_tasks.sync_invoice_to_stripe.delay(-1)  # no such invoice: the task raises
    after = scrape()

    assert isinstance(failed.result, Invoice.DoesNotExist)
    tasks = "meterline_celery_tasks_total"
    assert (
        value(after, tasks, task=name, outcome="success") - value(before, tasks, task=name, outcome="success")
        == 2
    )
    sync = payment_tasks.sync_invoice_to_stripe.name
    assert (
        value(after, tasks, task=sync, outcome="failure") - value(before, tasks, task=sync, outcome="failure")
        == 1
    )
    assert value(after, tasks, task=name, outcome="failure") == value(
        before, tasks, task=name, outcome="failure"
    )


def test_a_transient_stripe_failure_counts_a_retry_and_a_refusal_counts_a_permanent_failure(
    double, plan, settings, eager_tasks, scrape
):
    first = finalized(billed_tenant(plan), typical_usage())
    second = finalized(billed_tenant(plan), typical_usage())
    # Three 500s outlast the SDK's own two retries of the request: the task's first run fails and retries.
    double.inject(r"/v1/customers", "POST", "500", times=3)
    before = scrape()

    payment_tasks.sync_invoice_to_stripe.delay(first.pk)
    settings.STRIPE_API_KEY = "sk_live_wrong"  # Stripe answers 401: no retry can help
    payment_tasks.sync_invoice_to_stripe.delay(second.pk)
    after = scrape()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    sync = payment_tasks.sync_invoice_to_stripe.name
    assert moved("meterline_stripe_sync_failures_total", kind="transient") == 1
    assert moved("meterline_stripe_sync_failures_total", kind="permanent") == 1
    assert moved("meterline_celery_tasks_total", task=sync, outcome="retry") == 1
    assert moved("meterline_celery_tasks_total", task=sync, outcome="success") == 2  # a refusal is handled
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.sync_state, second.sync_state) == (Invoice.SyncState.SYNCED, Invoice.SyncState.FAILED)


def test_rollup_drift_found_by_verify_rollups_is_counted_per_group(eager_tasks, agent_client, tenant, scrape):
    agent_client.post("/api/v1/events", {"events": [event("a"), event("b", model="gpt-4o")]})
    before = scrape()
    usage_tasks.verify_rollups.delay(tenant.pk)
    tampered = AgentRollup.objects.filter(tenant=tenant).update(quantity=7)
    drift = usage_tasks.verify_rollups.delay(tenant.pk).get()
    after = scrape()

    assert len(drift) == tampered >= 2
    checks = "meterline_rollup_checks_total"
    assert value(after, checks, result="clean") - value(before, checks, result="clean") == 1
    assert value(after, checks, result="drift") - value(before, checks, result="drift") == 1
    groups = "meterline_rollup_drift_groups_total"
    assert value(after, groups, rollup="usage_agentrollup") - value(
        before, groups, rollup="usage_agentrollup"
    ) == (tampered)
    assert value(after, groups, rollup="usage_usagerollup") == value(
        before, groups, rollup="usage_usagerollup"
    )


def test_pending_outbox_events_are_counted_when_scraped(tenant, scrape):
    assert value(scrape(), "meterline_outbox_pending_events") == 0
    events = [outbox.record(tenant.pk, "test.happened", {"n": n}) for n in range(3)]
    assert value(scrape(), "meterline_outbox_pending_events") == 3
    events[0].dispatched_at = events[0].created_at
    events[0].save()
    assert value(scrape(), "meterline_outbox_pending_events") == 2
