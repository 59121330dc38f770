"""The dashboard and the usage explorer switch between this period, the last 30 days and past periods (issue 17
part 5). Amounts are computed here: one meter at $0.01 a character, so every allocation is exact."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import periods
from tests.billing.builders import make_plan, store, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db
PRICE = Decimal("0.01")


@pytest.fixture
def tenant_with_history(client):
    """Usage 33, 20 and 2 days ago and one hour ago; $10 base fee; its owner logged in."""
    tenant = TenantFactory(timezone="UTC")
    prices = [{"meter_id": "tts_characters", "unit_amount": PRICE, "unit_size": Decimal(1)}]
    subscribe(
        tenant,
        make_plan(base_fee="10.00", prices=prices),
        starts_on=timezone.now().date() - timedelta(days=90),
    )
    agent = AgentFactory(tenant=tenant)
    now = timezone.now()
    usage = {33: 1000, 20: 300, 2: 40, 0: 5}
    for days_ago, characters in usage.items():
        when = now - timedelta(days=days_ago, hours=1)
        store(
            agent, when, {"tts_characters": characters}, f"e{days_ago}", provider="Cartesia", model="sonic-3"
        )
    client.force_login(MembershipFactory(tenant=tenant, role="owner").user)
    return tenant, {now - timedelta(days=d, hours=1): q for d, q in usage.items()}


def spend_shown(page: str) -> Decimal:
    value = re.search(r'data-testid="period-spend">\$([\d,.]+)<', page).group(1)
    return Decimal(value.replace(",", ""))


def test_the_dashboard_switches_between_this_period_the_last_30_days_and_past_periods(
    client, tenant_with_history
):
    _tenant, usage = tenant_with_history
    today = timezone.localdate()
    this_month = periods.month_start(today)

    page = client.get("/").content.decode()
    switcher = page[page.index('data-testid="period-switcher"') :].split("</nav>")[0]
    assert 'aria-current="page" data-period=""' in switcher
    assert "Last 30 days" in switcher
    previous = periods.previous_month(this_month)
    assert f'data-period="{previous:%Y-%m}"' in switcher  # usage reaches back there
    this_period = sum(q for when, q in usage.items() if when.date() >= this_month)
    assert spend_shown(page) == Decimal("10.00") + this_period * PRICE

    rolling = client.get("/?period=last30").content.decode()
    window_start = today - timedelta(days=29)
    in_window = sum(q for when, q in usage.items() if when.date() >= window_start)
    assert spend_shown(rolling) == in_window * PRICE  # usage only: no fee
    assert "usage only" in rolling and "Forecast" not in rolling
    assert rolling.count('class="bar"') >= 3

    past = client.get(f"/?period={previous:%Y-%m}").content.decode()
    in_previous = sum(q for when, q in usage.items() if periods.month_start(when.date()) == previous)
    assert spend_shown(past) == Decimal("10.00") + in_previous * PRICE
    assert f"Spend in {previous:%B %Y}" in past and "Forecast" not in past

    # a period the tenant never had, or nonsense, is a 400 that offers the real choices
    for wanted in ("1999-01", "last31", "<script>"):
        answer = client.get("/", {"period": wanted})
        assert answer.status_code == 400
        assert 'data-testid="period-switcher"' in answer.content.decode()
        assert "<script>" not in answer.content.decode()


def test_the_usage_explorer_offers_the_same_ranges(client, tenant_with_history):
    today = timezone.localdate()
    page = client.get("/usage/?group_by=day").content.decode()
    ranges = page[page.index('data-testid="range-switcher"') :].split("</nav>")[0]
    window_start = today - timedelta(days=29)
    assert f"start={window_start.isoformat()}&amp;end={today.isoformat()}" in ranges
    assert "group_by=day" in ranges  # the other filters are kept
    link = re.search(r'href="\?([^"]*)"[^>]*>Last 30 days<', ranges).group(1).replace("&amp;", "&")
    rolling = client.get(f"/usage/?{link}").content.decode()
    assert 'aria-current="page">Last 30 days<' in rolling
    assert '<td class="day">' in rolling
