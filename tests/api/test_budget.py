"""GET /api/v1/budget with an agent key: period-to-date spend against the budget (DESIGN §4)."""

from decimal import Decimal

import pytest

from spend import budgets
from tests.conftest import AgentClient

pytestmark = pytest.mark.django_db


def test_budget_read_reports_spend_against_the_budget(world):
    api = AgentClient(world.keys[0])
    assert api.get("/api/v1/budget").json()["budget"] is None
    budgets.save_budget(world.tenants[0], Decimal("100"), [50, 80, 100], "")

    body = api.get("/api/v1/budget").json()
    assert body["budget"] == "100" and Decimal(body["spend"]) > 0
    assert Decimal(body["remaining"]) == 100 - Decimal(body["spend"])
