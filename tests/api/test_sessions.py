"""PUT and GET /api/v1/sessions/{id}: sessions created by events or by PUT, updated field by field, and one
conversation's usage and cost read back (DESIGN §4)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import AgentClient
from tests.usage.builders import event, iso, recent
from usage.models import Session

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"


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


def test_session_read_shows_usage_and_cost_of_one_conversation(world):
    body = AgentClient(world.keys[0]).get("/api/v1/sessions/call-0").json()
    assert body["session_id"] == "call-0"
    meters = {u["meter"]: Decimal(u["quantity"]) for u in body["usage"]}
    assert meters["llm_input_cached_text_tokens"] == 15744 and Decimal(body["cost"]) > 0
