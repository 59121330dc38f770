"""The budget page: a manager sets the monthly budget, its thresholds and where alerts go."""

from decimal import Decimal

import pytest

from spend.models import Budget

pytestmark = pytest.mark.django_db


def test_the_budget_page_saves_the_budget_and_shows_it(world, owner_client):
    response = owner_client.post(
        "/budget/",
        {
            "monthly_amount": "123.45",
            "thresholds": ["50", "100"],
            "alert_email": "alerts@example.com",
        },
    )
    assert response.status_code == 302

    budget = Budget.objects.get(tenant=world.tenants[0])
    assert (budget.monthly_amount, budget.thresholds) == (Decimal("123.45"), [50, 100])
    assert budget.alert_email == "alerts@example.com"
    assert "123.45" in owner_client.get("/budget/").content.decode()
