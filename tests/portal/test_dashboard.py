"""The dashboard as a tenant user sees it: the period's spend and charts, no other tenant's data."""

import pytest

pytestmark = pytest.mark.django_db


def test_dashboard_shows_spend_and_charts(world, owner_client):
    page = owner_client.get("/").content.decode()
    assert "Spend this period" in page and page.count('class="bar"') >= 3
    assert world.tenants[1].name not in page
