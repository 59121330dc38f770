"""The portal at the edges (issue 12.3): dates at the ends of the calendar on the usage page and its CSV, and
any text as a session's path segment, get a page or a 4xx, never a 500."""

from __future__ import annotations

from datetime import date, timedelta
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing import periods

pytestmark = pytest.mark.django_db
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize(("start", "end"), [("9999-12-01", "9999-12-31"), ("0001-01-01", "0001-01-31")])
def test_usage_page_and_csv_at_the_ends_of_the_calendar_say_what_is_wrong(owner_client, start, end):
    page = owner_client.get("/usage/", {"start": start, "end": end})
    csv = owner_client.get("/usage.csv", {"start": start, "end": end})

    assert page.status_code == 200 and "Ensure this value is" in page.content.decode()
    assert csv.status_code == 400 and b"start" in csv.content


@FUZZ
@given(start=st.dates(), length=st.integers(min_value=0, max_value=60))
@example(start=date(9999, 12, 31), length=0)
@example(start=periods.LAST_QUERY_DAY, length=0)
@example(start=date(1, 1, 1), length=0)
def test_usage_csv_for_any_dates_is_a_file_or_a_400(owner_client, start, length):
    end = start + timedelta(days=length) if date.max - start > timedelta(days=length) else date.max
    response = owner_client.get("/usage.csv", {"start": start.isoformat(), "end": end.isoformat()})
    readable = start >= periods.FIRST_QUERY_DAY and end <= periods.LAST_QUERY_DAY
    assert response.status_code == (200 if readable else 400)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segment=st.text(min_size=1, max_size=40))
@example(segment="\x00")
@example(segment="call\x00")
def test_any_session_path_segment_is_a_page_or_not_found(owner_client, segment):
    response = owner_client.get(f"/sessions/{quote(segment, safe='')}/")
    assert response.status_code in (200, 404), (segment, response.status_code)
    if "\x00" in segment:
        assert response.status_code == 404
