"""GET /api/v1/usage with an agent key: usage with cost, grouped and filtered (DESIGN §4)."""

from decimal import Decimal

import pytest

from billing import invoicing, period_pricing
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
