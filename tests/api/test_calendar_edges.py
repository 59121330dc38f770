"""Dates at the ends of the calendar and hostile path segments get a 4xx (or 404), never a 500 (issue 12.3).

Property-based: timestamps anywhere in years 1–9999 with any offset up to ±23:59 on the three write
endpoints, date ranges anywhere in the calendar on GET /usage, and any text as a path segment."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing import periods
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import event, stored_count
from usage.models import Session

pytestmark = pytest.mark.django_db

EDGES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59.999999Z"]
WRITES = {
    "events": lambda stamp: ("POST", "/api/v1/events", {"events": [event(timestamp=stamp)]}),
    "livekit usage": lambda stamp: (
        "POST",
        "/api/v1/livekit/usage",
        {
            "session_id": "AJ_v3jYMGPJFx59",
            "timestamp": stamp,
            "usage": [
                {"type": "tts_usage", "provider": "Cartesia", "model": "sonic-3", "characters_count": 9}
            ],
        },
    ),
    "session start": lambda stamp: ("PUT", "/api/v1/sessions/call-1", {"started_at": stamp}),
}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def now():
    return datetime.now(UTC)


def rfc3339(moment: datetime, offset_minutes: int) -> str:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}{sign}{hours:02d}:{minutes:02d}"


def accepted(moment: datetime, offset_minutes: int) -> bool | None:
    """Whether the server must accept it: the UTC instant (computed here by hand) within 35 days back and
    5 minutes ahead; outside years 1–9999 in UTC it is no instant at all. None within seconds of an edge,
    where the answer depends on when the request is served."""
    try:
        instant = moment.replace(tzinfo=UTC) - timedelta(minutes=offset_minutes)
    except OverflowError:
        return False
    current = datetime.now(UTC)
    edges = (current - timedelta(days=35), current + timedelta(minutes=5))
    if any(abs(instant - edge) < timedelta(seconds=30) for edge in edges):
        return None
    return edges[0] <= instant <= edges[1]


def send(client: AgentClient, method: str, path: str, body):
    return client.client.generic(method, path, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("stamp", EDGES)
@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_timestamps_beyond_the_calendar_are_refused_on_every_write(agent_client, write, stamp):
    response = send(agent_client, *write(stamp))
    assert 400 <= response.status_code < 500, response.content
    assert stored_count() == 0 and not Session.objects.exists()


@FUZZ
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    offset=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    write=st.sampled_from(sorted(WRITES)),
)
@example(moment=datetime(9999, 12, 31, 23, 59, 59), offset=-(23 * 60 + 59), write="events")
@example(moment=datetime(1, 1, 1), offset=1, write="session start")
def test_any_timestamp_with_any_offset_is_accepted_exactly_in_the_window(agent_client, moment, offset, write):
    expected = accepted(moment, offset)
    response = send(agent_client, *WRITES[write](rfc3339(moment, offset)))
    assert response.status_code < 500, response.content
    if expected is not None:
        assert (response.status_code in (200, 201)) is expected, response.content


@FUZZ
@given(
    shift=st.timedeltas(min_value=-timedelta(days=37), max_value=timedelta(days=2)),
    offset=st.sampled_from([-(23 * 60 + 59), -1, 0, 1, 23 * 60 + 59]),
)
def test_recent_timestamps_with_extreme_offsets_follow_the_same_rule(agent_client, shift, offset):
    """Around the window's edges, reached through local times almost a day from UTC."""
    moment = datetime.now(UTC).replace(tzinfo=None) + shift
    expected = accepted(moment, offset)
    response = send(agent_client, *WRITES["events"](rfc3339(moment, offset)))
    assert response.status_code in (200, 422), response.content
    if expected is not None:
        assert (response.status_code == 200) is expected, response.content


def test_usage_read_at_the_end_of_the_calendar_is_refused(agent_client):
    response = agent_client.get("/api/v1/usage", start="9999-12-01", end="9999-12-31")
    assert response.status_code == 400
    assert {e["pointer"] for e in response.json()["errors"]} == {"/start", "/end"}


@FUZZ
@given(start=st.dates(), length=st.integers(min_value=-5, max_value=500))
@example(start=date(9999, 12, 1), length=30)
@example(start=date(1, 1, 1), length=1)
@example(start=periods.LAST_QUERY_DAY - timedelta(days=1), length=1)
def test_any_date_range_is_read_or_refused_never_a_500(usage_client, start, length):
    try:
        end = start + timedelta(days=length)
    except OverflowError:
        end = date.max
    response = usage_client.get("/api/v1/usage", start=start.isoformat(), end=end.isoformat(), group_by="day")
    readable = periods.FIRST_QUERY_DAY <= start < end <= periods.LAST_QUERY_DAY and (end - start).days <= 400
    assert response.status_code == (200 if readable else 400), response.content


@pytest.fixture
def usage_client(db):
    """A key of a tenant in a zone far from UTC, where the calendar's ends come soonest."""
    return AgentClient(api_key_for(AgentFactory(tenant=TenantFactory(timezone="Pacific/Kiritimati"))))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segment=st.text(min_size=1, max_size=40))
@example(segment="\x00")
@example(segment="a\x00b")
@example(segment="\ud800")
def test_any_path_segment_under_sessions_reads_or_is_not_found(agent_client, segment):
    response = agent_client.get(f"/api/v1/sessions/{quote(segment, safe='', errors='surrogatepass')}")
    assert response.status_code == 404, response.content
    assert response["Content-Type"] == "application/problem+json"
