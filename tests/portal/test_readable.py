"""The portal reads like a person: meters by name (code on hover, codes in CSVs), a forecast that says how it
is made and when it is too early (issue 17 part 5)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import periods, selectors
from usage.meters import METER_NAMES

pytestmark = pytest.mark.django_db


def test_pages_name_meters_and_keep_the_code_on_hover(world, owner_client):
    session = owner_client.get("/sessions/call-0/").content.decode()
    assert f'<td title="tts_characters">{METER_NAMES["tts_characters"]}</td>' in session
    assert "<code>tts_characters</code>" not in session
    explorer = owner_client.get("/usage/?group_by=session").content.decode()
    assert f'<span title="llm_input_text_tokens">{METER_NAMES["llm_input_text_tokens"]}</span>' in explorer
    # the CSV keeps the codes
    exported = b"".join(owner_client.get("/usage.csv?group_by=session").streaming_content).decode()
    assert "llm_input_text_tokens" in exported.splitlines()[0]
    assert METER_NAMES["llm_input_text_tokens"] not in exported
    # a meter renamed by staff is shown by its new name
    from usage.models import Meter

    Meter.objects.filter(code="tts_characters").update(name="Voice characters")
    assert (
        '<td title="tts_characters">Voice characters</td>'
        in owner_client.get("/sessions/call-0/").content.decode()
    )


def test_the_forecast_waits_for_three_days_and_says_how_it_is_made(world, owner_client):
    tenant = world.tenants[0]
    spend = selectors.current_spend(tenant)
    begin = periods.local_midnight(spend.start, tenant.timezone)
    assert spend.forecast_is_early(begin + timedelta(days=2, hours=23, minutes=59))
    assert not spend.forecast_is_early(begin + timedelta(days=3))
    assert spend.days_so_far(begin + timedelta(days=1, hours=12)) == 1.5

    page = owner_client.get("/").content.decode()
    basis = page[page.index('data-testid="forecast-basis"') :].split("</div>")[0]
    days = periods.days_between(spend.start, spend.end)
    if spend.forecast_is_early(timezone.now()):
        assert "Too early to forecast" in basis and "a forecast needs 3" in basis
    else:
        assert "extended in a straight line" in basis and f"to all {days}" in basis
