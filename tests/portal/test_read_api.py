"""Read API with agent keys: usage with cost, one session, the budget (DESIGN §4)."""

from decimal import Decimal

import pytest

from billing import invoicing, period_pricing
from spend import budgets
from tests.conftest import AgentClient

pytestmark = pytest.mark.django_db


def test_usage_groups_quantities_and_cost_and_matches_the_draft_invoice(world):
    api = AgentClient(world.keys[0])
    tenant = world.tenants[0]
    body = api.get("/api/v1/usage", group_by="meter,model").json()

    tts = next(r for r in body["results"] if r["group"] == {"meter": "tts_characters", "model": "sonic-3"})
    assert tts["quantity"] == {"tts_characters": "943"}
    start, end = invoicing.current_period(tenant)
    priced = period_pricing.price_period(tenant, start, end)
    usage_total = sum((line.amount for line in priced.lines if line.kind in ("usage", "minimum")), Decimal(0))
    assert abs(Decimal(body["total_cost"]) - usage_total) < Decimal("0.01") * len(priced.lines)
    assert body["currency"] == "USD" and body["group_by"] == ["meter", "model"]


@pytest.mark.parametrize(
    "query", [{"group_by": "tenant"}, {"start": "yesterday"}, {"start": "2026-05-01", "end": "2026-04-01"}]
)
def test_usage_rejects_bad_queries_with_a_problem(world, query):
    response = AgentClient(world.keys[0]).get("/api/v1/usage", **query)
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"]


def test_session_read_shows_usage_and_cost_of_one_conversation(world):
    body = AgentClient(world.keys[0]).get("/api/v1/sessions/call-0").json()
    assert body["session_id"] == "call-0"
    meters = {u["meter"]: Decimal(u["quantity"]) for u in body["usage"]}
    assert meters["llm_input_cached_text_tokens"] == 15744 and Decimal(body["cost"]) > 0


def test_budget_read_reports_spend_against_the_budget(world):
    api = AgentClient(world.keys[0])
    assert api.get("/api/v1/budget").json()["budget"] is None
    budgets.save_budget(world.tenants[0], Decimal("100"), [50, 80, 100], "", "")

    body = api.get("/api/v1/budget").json()
    assert body["budget"] == "100" and Decimal(body["spend"]) > 0
    assert Decimal(body["remaining"]) == 100 - Decimal(body["spend"])
