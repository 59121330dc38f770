"""An agent key writes only its own agent's sessions; it reads the whole tenant (DESIGN §11, decision 007).

Two agents of one tenant, each with its own key, over HTTP: events, LiveKit metrics and usage reports, and
``PUT /sessions/{id}`` into the other's session are refused with 409 and store nothing; an agent resending
its own accepted batch still gets 200 with duplicates."""

from __future__ import annotations

import pytest

from tests import livekit_samples as samples
from tests.conftest import AgentClient
from tests.factories import AgentFactory, api_key_for
from tests.usage.builders import event, recent, stored_count, totals
from usage.models import Session

pytestmark = pytest.mark.django_db

SAMPLE = "pipeline_deepgram_openai_cartesia"


@pytest.fixture
def agents(tenant):
    first, second = AgentFactory(tenant=tenant), AgentFactory(tenant=tenant)
    return (first, AgentClient(api_key_for(first))), (second, AgentClient(api_key_for(second)))


def metrics(session_id: str) -> dict:
    return {"session_id": session_id, "metrics": samples.shifted_metrics(samples.load(SAMPLE))}


def usage_report(session_id: str) -> dict:
    return {"session_id": session_id, "usage": samples.final_model_usage(samples.load(SAMPLE))}


def assert_refused(response, pointers: list[str]) -> None:
    assert response.status_code == 409, response.content
    problem = response.json()
    assert problem["type"].endswith("/session-of-another-agent")
    assert [e["pointer"] for e in problem["errors"]] == pointers


def test_events_into_another_agents_session_are_refused_and_the_batch_stores_nothing(tenant, agents):
    (first, one), (_, two) = agents
    one.post("/api/v1/events", {"events": [event("a-1", session_id="call-1")]})
    before = totals(tenant)

    batch = [
        event("b-1", session_id="b-own"),
        event("b-2", session_id="call-1"),
        event("b-3", session_id=None),
    ]
    assert_refused(two.post("/api/v1/events", {"events": batch}), ["/events/1/session_id"])

    assert totals(tenant) == before and stored_count(tenant) == 1
    assert not Session.objects.filter(session_id="b-own").exists()
    assert Session.objects.get(session_id="call-1").agent == first


def test_a_session_created_by_put_belongs_to_its_agent_too(agents):
    (_, one), (_, two) = agents
    assert one.put("/api/v1/sessions/call-7", {"started_at": recent(3)}).status_code == 201
    assert_refused(
        two.post("/api/v1/events", {"events": [event("b-1", session_id="call-7")]}), ["/events/0/session_id"]
    )
    assert stored_count() == 0


def test_put_on_another_agents_session_is_refused_and_changes_nothing(agents):
    (first, one), (_, two) = agents
    one.put("/api/v1/sessions/call-1", {"end_user_id": "+15550100", "metadata": {"plan": "gold"}})

    response = two.put("/api/v1/sessions/call-1", {"end_user_id": "+15550199", "metadata": {}})

    assert_refused(response, ["/session_id"])
    session = Session.objects.get(session_id="call-1")
    assert (session.agent, session.end_user_id, session.metadata) == (first, "+15550100", {"plan": "gold"})


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/v1/livekit/metrics", metrics), ("/api/v1/livekit/usage", usage_report)],
    ids=["metrics", "usage"],
)
def test_livekit_reports_into_another_agents_session_are_refused(tenant, agents, path, body):
    (_, one), (_, two) = agents
    one.post("/api/v1/events", {"events": [event("a-1", session_id="AJ_v3jYMGPJFx59")]})
    before = totals(tenant)

    assert_refused(two.post(path, body("AJ_v3jYMGPJFx59")), ["/session_id"])

    assert totals(tenant) == before and stored_count(tenant) == 1
    assert Session.objects.get(session_id="AJ_v3jYMGPJFx59").livekit_report_mode == ""


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/events", lambda s: {"events": [event("a-1", session_id=s), event("a-2", session_id=s)]}),
        ("/api/v1/livekit/metrics", metrics),
        ("/api/v1/livekit/usage", usage_report),
    ],
    ids=["events", "metrics", "usage"],
)
def test_the_owner_resending_an_accepted_batch_gets_duplicates(tenant, agents, path, body):
    (_, one), (_, two) = agents
    payload = body("call-1")
    first = one.post(path, payload).json()
    after_first = totals(tenant)

    again = one.post(path, payload)

    assert again.status_code == 200 and first["accepted"] > 0
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, first["accepted"])
    assert totals(tenant) == after_first
    assert two.post(path, payload).status_code == 409  # the same batch from the other agent


def test_reads_stay_tenant_wide(tenant, agents):
    (first, one), (_, two) = agents
    one.post("/api/v1/events", {"events": [event("a-1", session_id="call-1")]})

    session = two.get("/api/v1/sessions/call-1")
    usage = two.get("/api/v1/usage", group_by="agent").json()

    assert session.status_code == 200 and session.json()["agent"] == first.name
    assert [row["group"]["agent"] for row in usage["results"]] == [first.name]
    assert two.get("/api/v1/budget").status_code == 200
