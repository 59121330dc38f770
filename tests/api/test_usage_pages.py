"""GET /api/v1/usage grouped by session a page at a time: 50 sessions to a page in session id order, ``next``
the URL of the following page, and the pages together every session once, with its per-call cost."""

from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from tests.billing.builders import make_plan, store_calls, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for

pytestmark = pytest.mark.django_db

RATE = Decimal("0.012") / 60  # Deepgram nova-3, per second of audio


def test_usage_by_session_comes_fifty_sessions_a_page_and_next_leads_through_all_of_them():
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    price = {"meter_id": "stt_audio_seconds", "provider": "Deepgram", "model_pattern": "nova-3"}
    subscribe(agent.tenant, make_plan(prices=[{**price, "unit_amount": Decimal("0.012"), "unit_size": 60}]))
    seconds = {f"call-{n:03d}": n + 1 for n in range(105)}
    store_calls(agent, datetime(2026, 3, 10, 12, tzinfo=UTC), seconds)
    client = AgentClient(api_key_for(agent))

    pages = []
    response = client.get("/api/v1/usage", group_by="session", start="2026-03-01", end="2026-04-01")
    while True:
        assert response.status_code == 200
        body = response.json()
        pages.append(body)
        if body["next"] is None:
            break
        following = urlsplit(body["next"])
        assert following.path == "/api/v1/usage" and "after=" in following.query
        response = client.client.get(f"{following.path}?{following.query}")
    assert [len(page["results"]) for page in pages] == [50, 50, 5]
    results = [row for page in pages for row in page["results"]]
    assert [row["group"]["session"] for row in results] == sorted(seconds)
    for row in results:
        quantity = seconds[row["group"]["session"]]
        assert row["quantity"] == {"stt_audio_seconds": str(quantity)}
        assert Decimal(row["cost"]) == (quantity * RATE).quantize(Decimal("0.000001"))
    for page in pages:  # each page's total is its own rows'
        assert Decimal(page["total_cost"]) == sum(Decimal(row["cost"]) for row in page["results"])
    assert sum(Decimal(row["cost"]) for row in results) == sum(q * RATE for q in seconds.values())


def test_other_groupings_are_not_paged_and_a_bad_after_is_a_400(agent_client):
    body = agent_client.get("/api/v1/usage", group_by="meter").json()
    assert body["next"] is None
    response = agent_client.get("/api/v1/usage", group_by="session", after="call\x00")
    assert response.status_code == 400
    assert [e["pointer"] for e in response.json()["errors"]] == ["/after"]
