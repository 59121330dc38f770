"""Identifiers have one alphabet, matched in full on every write endpoint; labels are printable; stored
identifiers from before the rule stay readable (DESIGN §11, docs/decisions/007, issue 12.1 and 12.2)."""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import livekit_samples as samples
from tests.conftest import AgentClient
from tests.usage.builders import event, recent
from usage.models import Session, UsageEvent

pytestmark = pytest.mark.django_db

# The alphabet as decision 007 writes it, independently of the code's pattern.
ALPHABET = set(string.ascii_letters + string.digits + "._:@+-")
# What "$" lets through, and the characters that break a line, a URL or a database on the way.
ENDINGS = {"newline": "\n", "CR": "\r", "NUL": "\x00", "tab": "\t", "LS": "\u2028", "PS": "\u2029"}


def is_identifier(text: str, max_length: int = 128) -> bool:
    return 0 < len(text) <= max_length and set(text) <= ALPHABET and text not in (".", "..")


def metrics_body(session_id: str = "AJ_v3jYMGPJFx59", provider: str = "Cartesia", model: str = "sonic-3"):
    metric = next(
        m
        for m in samples.shifted_metrics(samples.load("pipeline_deepgram_openai_cartesia"))
        if m["type"] == "tts_metrics"
    )
    metric["metadata"] = {"model_provider": provider, "model_name": model}
    return {"session_id": session_id, "metrics": [metric]}


def usage_body(session_id: str = "AJ_W9HUqK1ohlxx", provider: str = "Cartesia", timestamp: str | None = None):
    entries = [{"type": "tts_usage", "provider": provider, "model": "sonic-3", "characters_count": 943}]
    return {"session_id": session_id, "usage": entries, "timestamp": timestamp or recent()}


# (method, path, body, the name the error points at), for a value placed in each field a client writes.
FIELDS = {
    "event id": lambda v: ("POST", "/api/v1/events", {"events": [event("e" * 127 + v)]}, "/events/0/id"),
    "short event id": lambda v: ("POST", "/api/v1/events", {"events": [event("e-1" + v)]}, "/events/0/id"),
    "event timestamp": lambda v: (
        "POST",
        "/api/v1/events",
        {"events": [event(timestamp=recent() + v)]},
        "timestamp",
    ),
    "event session id": lambda v: (
        "POST",
        "/api/v1/events",
        {"events": [event(session_id="call-1" + v)]},
        "session_id",
    ),
    "event provider": lambda v: (
        "POST",
        "/api/v1/events",
        {"events": [event(provider="openai" + v)]},
        "provider",
    ),
    "event model": lambda v: ("POST", "/api/v1/events", {"events": [event(model="gpt-4o" + v)]}, "model"),
    "decimal string": lambda v: (
        "POST",
        "/api/v1/events",
        {"events": [event(usage={"tts_characters": "12.5" + v})]},
        "tts_characters",
    ),
    "meter code": lambda v: (
        "POST",
        "/api/v1/events",
        {"events": [event(usage={"tts_characters" + v: 1})]},
        "usage",
    ),
    "metadata key": lambda v: (
        "POST",
        "/api/v1/events",
        {"events": [event(metadata={"room" + v: "a"})]},
        "metadata",
    ),
    "metrics session id": lambda v: (
        "POST",
        "/api/v1/livekit/metrics",
        metrics_body("AJ_1" + v),
        "/session_id",
    ),
    "metrics provider": lambda v: (
        "POST",
        "/api/v1/livekit/metrics",
        metrics_body(provider="Cartesia" + v),
        "provider",
    ),
    "metrics model": lambda v: (
        "POST",
        "/api/v1/livekit/metrics",
        metrics_body(model="sonic-3" + v),
        "model_name",
    ),
    "usage session id": lambda v: ("POST", "/api/v1/livekit/usage", usage_body("AJ_1" + v), "/session_id"),
    "usage provider": lambda v: (
        "POST",
        "/api/v1/livekit/usage",
        usage_body(provider="Cartesia" + v),
        "provider",
    ),
    "usage timestamp": lambda v: (
        "POST",
        "/api/v1/livekit/usage",
        usage_body(timestamp=recent() + v),
        "timestamp",
    ),
    "session path id": lambda v: (
        "PUT",
        f"/api/v1/sessions/{quote('call-9' + v, safe='')}",
        {},
        "/session_id",
    ),
    "session started_at": lambda v: (
        "PUT",
        "/api/v1/sessions/call-9",
        {"started_at": recent() + v},
        "started_at",
    ),
    "session ended_at": lambda v: ("PUT", "/api/v1/sessions/call-9", {"ended_at": recent() + v}, "ended_at"),
    "session end user": lambda v: (
        "PUT",
        "/api/v1/sessions/call-9",
        {"end_user_id": "+15550100" + v},
        "end_user_id",
    ),
    "session type": lambda v: (
        "PUT",
        "/api/v1/sessions/call-9",
        {"conversation_type": "inbound" + v},
        "conversation_type",
    ),
    "session metadata key": lambda v: (
        "PUT",
        "/api/v1/sessions/call-9",
        {"metadata": {"room" + v: "a"}},
        "metadata",
    ),
}


def send(client: AgentClient, method: str, path: str, body):
    return client.client.generic(method, path, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
@pytest.mark.parametrize("field", FIELDS.values(), ids=FIELDS.keys())
def test_a_field_with_a_line_break_or_control_character_is_refused_and_nothing_is_stored(
    agent_client, field, ending
):
    method, path, body, pointer = field(ending)

    response = send(agent_client, method, path, body)

    assert 400 <= response.status_code < 500, response.content
    problem = response.json()
    assert response["Content-Type"] == "application/problem+json"
    if "%00" in path:
        assert response.status_code == 404  # a path with NUL names nothing
    else:
        assert any(pointer in e["pointer"] for e in problem["errors"]), problem
    assert not UsageEvent.objects.exists() and not Session.objects.exists()


@pytest.mark.parametrize("field", FIELDS.values(), ids=FIELDS.keys())
def test_the_same_fields_without_the_ending_are_accepted(agent_client, field):
    """The refusals above are the endings', not the requests'."""
    method, path, body, _ = field("")
    assert 200 <= send(agent_client, method, path, body).status_code < 300


def livekit_ids() -> list[str]:
    """The ids real LiveKit sessions carry (job ids, room names) in the bundled captures."""
    found = []
    for name in ("pipeline_deepgram_openai_cartesia", "realtime_gemini_live", "realtime_openai_gpt_realtime"):
        session = samples.load(name)["session"]
        found += [session["job_id"], session["room"]]
    return found


REAL_WORLD_IDS = [
    *livekit_ids(),
    "RM_xu7jLbC4R8xe",
    "+14155550123",
    "sip:alice@example.com",
    "caller.42@acme-voice",
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "lk:stt:ab12",
    "...",
    "x" * 128,
]


@pytest.mark.parametrize("identifier", REAL_WORLD_IDS)
def test_real_world_ids_pass_on_every_endpoint(agent_client, tenant, identifier):
    short = identifier[:40]
    batch = {"events": [event(identifier, session_id=identifier, metadata={short: "v"})]}
    assert agent_client.post("/api/v1/events", batch).json()["accepted"] == 1
    assert (
        agent_client.post("/api/v1/livekit/metrics", metrics_body(identifier[:127] + "m")).status_code == 200
    )
    assert agent_client.post("/api/v1/livekit/usage", usage_body(identifier[:127] + "u")).status_code == 200
    put = agent_client.put(f"/api/v1/sessions/{quote(identifier, safe='')}", {"end_user_id": identifier})
    assert put.status_code == 200 and put.json()["end_user_id"] == identifier
    read = agent_client.get(f"/api/v1/sessions/{quote(identifier, safe='')}").json()
    assert read["session_id"] == identifier and read["usage"]


def test_metadata_values_are_free_text(agent_client):
    """Values are data, never an identifier or a label: line breaks and tabs are kept as sent."""
    note = "line one\nline two\ttabbed \u2028 done"
    response = agent_client.post("/api/v1/events", {"events": [event(metadata={"note": note})]})
    assert response.status_code == 200
    assert UsageEvent.objects.get().metadata == {"note": note}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    session_id=st.text(st.characters(codec="utf-8"), max_size=130) | st.text(sorted(ALPHABET), max_size=130)
)
def test_any_session_id_is_stored_exactly_when_it_is_in_the_alphabet(agent_client, session_id):
    batch = {"events": [event(f"h-{abs(hash(session_id))}", session_id=session_id)]}
    response = agent_client.post("/api/v1/events", batch)

    if session_id == "" or is_identifier(session_id):
        assert response.status_code == 200, response.content
        assert session_id == "" or Session.objects.filter(session_id=session_id).exists()
    else:
        assert response.status_code == 422, response.content
        assert response.json()["errors"][0]["pointer"] == "/events/0/session_id"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(session_id=st.text(max_size=130) | st.text(sorted(ALPHABET), min_size=1, max_size=130))
def test_a_session_can_be_put_exactly_when_its_id_is_in_the_alphabet(agent_client, session_id):
    response = agent_client.put(f"/api/v1/sessions/{quote(session_id, safe='')}", {"conversation_type": "x"})

    if is_identifier(session_id):
        assert response.status_code in (200, 201) and response.json()["session_id"] == session_id
    elif session_id == "":
        assert response.status_code == 404  # /api/v1/sessions/ names no session
    else:
        assert response.status_code == (404 if "\x00" in session_id else 400), response.content
        if "\x00" not in session_id:
            assert not Session.objects.filter(session_id=session_id).exists()


STORED_BEFORE_THE_RULE = ["line\nbreak", "room/42", "two words", "café", "tab\there", "=1+1", "trailing\n"]


@pytest.mark.parametrize("legacy", STORED_BEFORE_THE_RULE)
def test_ids_stored_before_the_alphabet_stay_readable_and_are_not_writable(
    agent_client, tenant, agent, legacy
):
    Session.objects.create(tenant=tenant, agent=agent, session_id=legacy, end_user_id="old")
    UsageEvent.objects.create(
        tenant=tenant,
        agent=agent,
        event_id=f"old-{len(legacy)}",
        timestamp=datetime.now(UTC),
        session_id=legacy,
        usage={"tts_characters": "5"},
    )
    path = f"/api/v1/sessions/{quote(legacy, safe='')}"

    read = agent_client.get(path)
    assert read.status_code == 200 and read.json()["session_id"] == legacy

    assert agent_client.put(path, {"end_user_id": "new"}).status_code == 400
    assert Session.objects.get(session_id=legacy).end_user_id == "old"
    assert agent_client.get("/api/v1/usage", group_by="session").status_code == 200
