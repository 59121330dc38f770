"""DESIGN §4 semantics of POST /api/v1/events: atomic batches, dedupe forever, conflicts, sessions."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import event, iso, recent, stored_count, totals
from usage.api import views
from usage.models import Meter, Session, UsageEvent

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"


def test_accepted_batch_is_stored_and_rolled_up(agent_client, tenant):
    response = agent_client.post(URL, {"events": [event("a"), event("b", usage={"tts_characters": "12.5"})]})

    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 0, "conflicts": 0, "conflicting_events": []}
    assert totals(tenant) == {
        ("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini"): Decimal(1200),
        ("llm_output_text_tokens", "api.openai.com", "gpt-4o-mini"): Decimal(85),
        ("tts_characters", "api.openai.com", "gpt-4o-mini"): Decimal("12.5"),
    }


def test_identical_resend_counts_as_duplicate_and_is_not_counted_twice(agent_client, tenant):
    original = event("a")
    agent_client.post(URL, {"events": [original]})

    # the same event written differently: key order, number vs string, +00:00 vs Z
    variant = {key: original[key] for key in reversed(list(original))}
    variant["usage"] = {"llm_output_text_tokens": 85.0, "llm_input_text_tokens": "1200.000"}
    variant["timestamp"] = original["timestamp"].replace("Z", "+00:00")
    response = agent_client.post(URL, {"events": [variant]})

    assert response.status_code == 200
    assert response.json()["duplicates"] == 1 and response.json()["accepted"] == 0
    assert stored_count(tenant) == 1
    assert totals(tenant)[("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini")] == 1200


def test_same_id_with_different_payload_is_a_conflict_and_the_stored_event_is_unchanged(agent_client, tenant):
    agent_client.post(URL, {"events": [event("a")]})

    changed = event("a", usage={"llm_input_text_tokens": 999999})
    response = agent_client.post(URL, {"events": [event("b"), changed]})

    assert response.status_code == 200
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "conflicts": 1,
        "conflicting_events": [{"index": 1, "id": "a"}],
    }
    assert UsageEvent.objects.get(tenant=tenant, event_id="a").usage["llm_input_text_tokens"] == "1200"
    assert totals(tenant)[("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini")] == 2400


@pytest.mark.parametrize(
    "change",
    [
        {"timestamp": "shifted"},
        {"session_id": "call-2"},
        {"session_id": None},
        {"provider": "azure"},
        {"model": "gpt-4o"},
        {"usage": {"llm_input_text_tokens": 1200}},
        {"usage": {"llm_input_text_tokens": 1200, "llm_output_text_tokens": "85.000001"}},
        {"metadata": {"flag": 1}},
        {"metadata": {"flag": "true"}},
    ],
)
def test_each_field_of_a_resend_is_compared_with_the_stored_event(agent_client, tenant, change):
    original = event("a", metadata={"flag": True})
    assert agent_client.post(URL, {"events": [original]}).json()["accepted"] == 1
    resend = {**original, **change}
    if change.get("timestamp") == "shifted":
        stamp = datetime.fromisoformat(original["timestamp"].replace("Z", "+00:00"))
        resend["timestamp"] = iso(stamp + timedelta(microseconds=1))
    if change.get("session_id", "") is None:
        del resend["session_id"]

    body = agent_client.post(URL, {"events": [resend]}).json()

    assert (body["duplicates"], body["conflicts"]) == (0, 1)
    assert agent_client.post(URL, {"events": [original]}).json()["duplicates"] == 1  # still the same event


def test_one_invalid_event_rejects_the_whole_batch_with_a_pointer_per_field(agent_client, tenant):
    events = [event(f"e{i}") for i in range(5)]
    events[3]["usage"] = {"tts_characters": -4}
    events[4]["timestamp"] = "yesterday"

    response = agent_client.post(URL, {"events": events})

    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 422 and body["title"] and body["type"] and body["detail"]
    assert [e["pointer"] for e in body["errors"]] == ["/events/3/usage/tts_characters", "/events/4/timestamp"]
    assert stored_count() == 0


def test_repeats_inside_one_batch_are_duplicates_and_different_payloads_are_refused(agent_client, tenant):
    repeated = event("a")
    response = agent_client.post(URL, {"events": [repeated, dict(repeated)]})
    assert response.json()["accepted"] == 1 and response.json()["duplicates"] == 1

    response = agent_client.post(URL, {"events": [event("z"), event("z", model="gpt-4o")]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/events/1/id"
    assert not UsageEvent.objects.filter(event_id="z").exists()


@pytest.mark.parametrize(
    ("age", "accepted"),
    [
        (timedelta(days=35) - timedelta(minutes=1), True),
        (timedelta(days=35) + timedelta(seconds=1), False),
        (-timedelta(minutes=4, seconds=50), True),
        (-timedelta(minutes=5, seconds=10), False),
    ],
)
def test_timestamps_are_accepted_only_within_35_days_back_and_5_minutes_ahead(agent_client, age, accepted):
    response = agent_client.post(URL, {"events": [event("a", timestamp=iso(datetime.now(UTC) - age))]})
    assert (response.status_code == 200) is accepted
    if not accepted:
        assert response.json()["errors"][0]["pointer"] == "/events/0/timestamp"


def test_timestamp_offsets_are_normalised_to_utc(agent_client, tenant):
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    local = when.astimezone(ZoneInfo("Asia/Kolkata")).isoformat()
    agent_client.post(URL, {"events": [event("a", timestamp=local)]})
    assert UsageEvent.objects.get(event_id="a").timestamp == when


def test_unknown_and_inactive_meters_are_refused(agent_client):
    Meter.objects.filter(code="session_seconds").update(is_active=False)
    views._meter_cache = (0.0, frozenset())  # the per-process cache would otherwise hide the edit for 10 s
    response = agent_client.post(
        URL,
        {
            "events": [
                event("a", usage={"gpu_seconds": 3}),
                event("b", usage={"session_seconds": 3}),
            ]
        },
    )
    assert response.status_code == 422
    assert [e["pointer"] for e in response.json()["errors"]] == [
        "/events/0/usage/gpu_seconds",
        "/events/1/usage/session_seconds",
    ]
    assert stored_count() == 0


def test_event_ids_are_deduplicated_per_tenant(agent_client, tenant):
    agent_client.post(URL, {"events": [event("shared-id")]})
    other = TenantFactory()
    response = AgentClient(api_key_for(AgentFactory(tenant=other))).post(
        URL, {"events": [event("shared-id", usage={"tts_characters": 7})]}
    )

    assert response.json()["accepted"] == 1
    assert totals(other) == {("tts_characters", "api.openai.com", "gpt-4o-mini"): 7}
    assert ("tts_characters", "api.openai.com", "gpt-4o-mini") not in totals(tenant)


def test_another_agent_of_the_same_tenant_reusing_an_id_is_a_conflict(agent_client, tenant):
    agent_client.post(URL, {"events": [event("a")]})
    sibling = AgentClient(api_key_for(AgentFactory(tenant=tenant)))
    response = sibling.post(URL, {"events": [event("a")]})
    assert response.json()["conflicts"] == 1


def test_first_event_creates_the_session_and_put_updates_it(agent_client, tenant, agent):
    agent_client.post(URL, {"events": [event("a", session_id="conv-9")]})
    session = Session.objects.get(tenant=tenant, session_id="conv-9")
    assert session.agent == agent

    started, ended = datetime.now(UTC) - timedelta(minutes=3), datetime.now(UTC) - timedelta(minutes=1)
    response = agent_client.put(
        "/api/v1/sessions/conv-9",
        {
            "started_at": iso(started),
            "ended_at": iso(ended),
            "end_user_id": "caller-42",
            "conversation_type": "inbound_call",
            "metadata": {"room": "dental-line"},
        },
    )
    assert response.status_code == 200
    assert response.json()["end_user_id"] == "caller-42"

    response = agent_client.put("/api/v1/sessions/conv-9", {"conversation_type": "outbound"})
    session.refresh_from_db()
    assert (session.end_user_id, session.conversation_type, session.ended_at) == (
        "caller-42",
        "outbound",
        ended,
    )


def test_put_creates_a_missing_session_and_refuses_an_end_before_the_start(agent_client, tenant):
    response = agent_client.put("/api/v1/sessions/new-call", {"started_at": recent(1)})
    assert response.status_code == 201

    response = agent_client.put("/api/v1/sessions/new-call", {"ended_at": recent(30)})
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == "/ended_at"
    assert Session.objects.get(session_id="new-call").ended_at is None

    response = agent_client.put("/api/v1/sessions/bad", {"started_at": "soon", "colour": "red"})
    assert response.status_code == 400
    assert {e["pointer"] for e in response.json()["errors"]} >= {"/started_at"}
    assert not Session.objects.filter(session_id="bad").exists()
