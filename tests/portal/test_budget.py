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
            "webhook_url": "https://hooks.example.com/meterline",
        },
    )
    assert response.status_code == 302

    budget = Budget.objects.get(tenant=world.tenants[0])
    assert (budget.monthly_amount, budget.thresholds) == (Decimal("123.45"), [50, 100])
    assert (budget.alert_email, budget.webhook_url) == (
        "alerts@example.com",
        "https://hooks.example.com/meterline",
    )
    assert len(budget.webhook_secret) == 64
    assert "123.45" in owner_client.get("/budget/").content.decode()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local or cloud metadata"),
        ("https://10.0.0.7/hook", "private"),
        ("https://hooks.example.com:8443/hook", "only ports 80, 443"),
        ("ftp://hooks.example.com/hook", "only http and https"),
    ],
)
def test_the_budget_page_refuses_a_webhook_url_meterline_would_never_deliver_to(
    world, owner_client, settings, url, problem
):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    response = owner_client.post(
        "/budget/", {"monthly_amount": "100", "thresholds": ["50"], "alert_email": "", "webhook_url": url}
    )

    assert response.status_code == 200
    errors = response.context["form"].errors["webhook_url"]
    assert len(errors) == 1 and problem in errors[0]
    assert not Budget.objects.filter(tenant=world.tenants[0]).exists()
