"""The session list: sessions reported only through events (the README's way) show and sort by their first
and last usage; times the agent reports with PUT /sessions/{id} win."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from tests.billing.builders import store_calls
from tests.conftest import AgentClient
from tests.factories import AgentFactory, MembershipFactory, TenantFactory
from tests.usage.builders import event, iso
from usage.models import Session

pytestmark = pytest.mark.django_db


def listed(client) -> list[tuple[str, str, str]]:
    """(session id, started, ended) of each row of the first page, in order."""
    page = client.get("/sessions/").content.decode()
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    rows = []
    for row in body.split("</tr>")[:-1]:
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        rows.append((cells[0], cells[2], cells[3]))
    return rows


def shown(when: datetime) -> str:
    local = when.astimezone(UTC)  # the world's tenants are on UTC
    return f"{local.day} {local:%b %H:%M}"


def listed_as(world, session_id: str) -> tuple[str, str, str]:
    session = Session.objects.get(tenant=world.tenants[0], session_id=session_id)
    return (session_id, shown(session.first_usage_at), shown(session.last_usage_at))


def assert_newest_first(rows) -> None:
    starts = [Session.objects.get(session_id=r[0]).start for r in rows]
    assert None not in starts and starts == sorted(starts, reverse=True)


def test_a_session_reported_only_by_events_shows_and_sorts_by_its_first_and_last_usage(world, owner_client):
    agent = AgentClient(world.keys[0])
    now = timezone.now().replace(second=0, microsecond=0)
    # Older sessions whose agent reported times, enough to fill the first page twice over.
    for n in range(100):
        start = now - timedelta(days=3, minutes=n)
        assert agent.client.put(
            f"/api/v1/sessions/put-{n}",
            {"started_at": iso(start), "ended_at": iso(start + timedelta(minutes=1))},
            format="json",
        ).status_code in (200, 201)
    first, last = now - timedelta(minutes=40), now - timedelta(minutes=3)
    sent = [event("e-2", timestamp=iso(last), session_id="readme")]
    sent.append(event("e-1", timestamp=iso(first + timedelta(minutes=20)), session_id="readme"))
    assert agent.post("/api/v1/events", {"events": sent}).status_code == 200
    # an earlier event widens the span; a resend and a conflicting resend move nothing
    earlier = {"events": [event("e-0", timestamp=iso(first), session_id="readme")]}
    assert agent.post("/api/v1/events", earlier).status_code == 200
    agent.post("/api/v1/events", earlier)
    agent.post("/api/v1/events", {"events": [event("e-2", timestamp=iso(now), session_id="readme")]})

    rows = listed(owner_client)
    # with the world's LiveKit session, the two of today come first, newest first
    assert set(rows[:2]) == {("readme", shown(first), shown(last)), listed_as(world, "call-0")}
    assert_newest_first(rows)
    detail = owner_client.get("/sessions/readme/").content.decode()
    assert f"{first:%H:%M}–{last:%H:%M} (first to last usage)" in detail.replace("&ndash;", "–")

    # The agent says otherwise: its times win, and the list sorts by them.
    started = now - timedelta(days=3, minutes=30)
    assert agent.client.put(
        "/api/v1/sessions/readme", {"started_at": iso(started)}, format="json"
    ).status_code in (200, 201)
    rows = listed(owner_client)
    assert "readme" not in [r[0] for r in rows[:20]]
    assert ("readme", shown(started), shown(last)) in rows
    assert_newest_first(rows)


def test_a_livekit_session_has_its_metrics_times(world, owner_client):
    session = Session.objects.get(tenant=world.tenants[0], session_id="call-0")
    assert session.started_at is None and session.first_usage_at and session.last_usage_at
    assert session.first_usage_at <= session.last_usage_at
    assert listed(owner_client) == [listed_as(world, "call-0")]


def test_the_session_page_shows_retracted_events_struck_through_and_counts_the_others(world, owner_client):
    agent = AgentClient(world.keys[0])
    at = iso(timezone.now() - timedelta(minutes=3))
    sent = [
        event(f"fix-{n}", session_id="fixed", timestamp=at, usage={"tts_characters": 10 + n})
        for n in range(3)
    ]
    assert agent.post("/api/v1/events", {"events": sent}).status_code == 200
    replacement = event(
        "fix-0b", session_id="fixed", timestamp=at, usage={"tts_characters": 9}, replaces="fix-0"
    )
    assert agent.post("/api/v1/events", {"events": [replacement]}).status_code == 200
    assert agent.post("/api/v1/events/fix-1/retract", {"reason": "test call"}).status_code == 200

    page = owner_client.get("/sessions/fixed/").content.decode()
    assert "2 events" in page  # fix-0b and fix-2 count
    rows = re.findall(r'<tr class="retracted" data-testid="retracted-event">(.*?)</tr>', page, re.S)
    assert len(rows) == 2
    assert any("replaced by <code>fix-0b</code>" in row and "fix-0" in row for row in rows)
    assert any('title="Retracted' in row and "test call" in row for row in rows)
    assert "corrects <code>fix-0</code>" in page and "2 retracted events shown struck through" in page


def test_the_list_pages_fifty_sessions_newest_first_without_counting_them_all(client):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    client.force_login(MembershipFactory(tenant=agent.tenant).user)
    began = datetime(2026, 3, 10, 9, tzinfo=UTC)
    for n in range(55):
        store_calls(agent, began + timedelta(minutes=n), {f"call-{n:02d}": 60})
    newest_first = [f"call-{n:02d}" for n in reversed(range(55))]

    first = client.get("/sessions/").content.decode()
    assert [row[0] for row in listed(client)] == newest_first[:50]
    assert "Page 1</span>" in first and " of " not in first.split('class="pager"')[1]
    assert 'href="?page=2">Older' in first and "Newer" not in first
    second = client.get("/sessions/?page=2").content.decode()
    body = second.split("<tbody>")[1].split("</tbody>")[0]
    assert re.findall(r">(call-\d\d)</a>", body) == newest_first[50:]
    assert 'href="?page=1">← Newer' in second and "Older" not in second
    # a page past the last, or not a page number at all, is a page rather than an error
    beyond = client.get("/sessions/?page=9")
    assert beyond.status_code == 200 and "No sessions this far back" in beyond.content.decode()
    for bad in ("abc", "-3", "9" * 5000):
        response = client.get(f"/sessions/?page={bad}")
        assert response.status_code == 200 and "Page 1</span>" in response.content.decode()
