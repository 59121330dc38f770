"""Rollup reads: the one-pass row sets and the per-agent rollups answer as the per-grouping, per-session
queries do."""

import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from tests import livekit_samples as samples
from tests.conftest import AgentClient
from tests.factories import AgentFactory, api_key_for
from usage import rollups
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

GROUPINGS = ["day", "meter", "agent", "session", "hour", None]


def test_usage_row_sets_equal_usage_rows_per_grouping(world):
    tenant = world.tenants[0]
    second = AgentFactory(tenant=tenant)
    AgentClient(api_key_for(second)).post(
        "/api/v1/livekit/metrics",
        {
            "session_id": "call-earlier",
            "metrics": samples.shifted_metrics(
                samples.load("realtime_openai_gpt_realtime"), end_at=time.time() - 2 * 86400
            ),
        },
    )
    start, end = timezone.now() - timedelta(days=3), timezone.now() + timedelta(hours=1)
    for tz in (tenant.timezone, "Asia/Kolkata"):
        for filters in (
            None,
            {"agent": second.pk},
            {"meter": "llm_input_text_tokens"},
            {"session": "call-0"},
        ):
            got = rollups.usage_row_sets(tenant.pk, tz, start, end, GROUPINGS, filters)
            expected = [
                rollups.usage_rows(tenant.pk, tz, start, end, [g] if g else [], filters) for g in GROUPINGS
            ]
            assert got == expected
            assert [[list(row) for row in rows] for rows in got] == [
                [list(row) for row in rows] for rows in expected
            ]
    everything = rollups.usage_row_sets(tenant.pk, tenant.timezone, start, end, ["day", "agent"])
    # the days the raw events fall on in the tenant's zone: two sessions two days apart, each of which may
    # cross a midnight when the test runs just after one
    zone = ZoneInfo(tenant.timezone)
    days = {
        t.astimezone(zone).date()
        for t in UsageEvent.objects.for_tenant(tenant).values_list("timestamp", flat=True)
    }
    assert len(days) >= 2
    assert {row["day"] for row in everything[0]} == days and len({row["agent"] for row in everything[1]}) == 2
    with pytest.raises(ValueError):
        rollups.usage_row_sets(tenant.pk, tenant.timezone, start, end, ["model"])


def test_per_agent_rollups_answer_as_the_per_session_ones(world, monkeypatch):
    tenant = world.tenants[0]
    second = AgentFactory(tenant=tenant)
    AgentClient(api_key_for(second)).post(
        "/api/v1/livekit/metrics",
        {
            "session_id": "call-b",
            "metrics": samples.shifted_metrics(samples.load("realtime_openai_gpt_realtime")),
        },
    )
    start, end = timezone.now() - timedelta(days=3), timezone.now() + timedelta(hours=1)
    groupings = [["day"], ["meter"], ["agent"], ["hour"], ["provider", "model"], []]

    def answers():
        rows = [rollups.usage_rows(tenant.pk, "Asia/Kolkata", start, end, g) for g in groupings]
        return rows, rollups.usage_row_sets(tenant.pk, tenant.timezone, start, end, ["day", "agent", None])

    from_agent_rollups = answers()
    totals, agents = rollups.period_usage(tenant.pk, start, end)
    assert agents == 2 and totals and all(q > 0 for q in totals.values())

    monkeypatch.setattr(rollups, "_table", lambda keys, filters: "usage_usagerollup")
    assert answers() == from_agent_rollups
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT meter, provider, model, sum(quantity) FROM usage_usagerollup "
            "WHERE tenant_id = %s AND hour >= %s AND hour < %s GROUP BY 1, 2, 3",
            [tenant.pk, start, end],
        )
        assert totals == {(m, p, mo): q for m, p, mo, q in cursor.fetchall()}
        cursor.execute(
            "SELECT DISTINCT agent_id FROM usage_usagerollup WHERE tenant_id = %s AND hour >= %s AND hour < %s "
            "ORDER BY 1",
            [tenant.pk, start, end],
        )
        assert [row[0] for row in cursor.fetchall()] == sorted([world.agents[0].pk, second.pk])
