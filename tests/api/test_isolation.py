"""One tenant's key can neither write nor read another tenant's data (DESIGN §2)."""

import pytest

from tests import livekit_samples as samples
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import event, totals
from usage.models import Session, UsageEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenants():
    a, b = TenantFactory(), TenantFactory()
    return (a, AgentClient(api_key_for(AgentFactory(tenant=a)))), (
        b,
        AgentClient(api_key_for(AgentFactory(tenant=b))),
    )


def test_a_key_cannot_touch_another_tenants_events_sessions_or_reports(tenants):
    (a, client_a), (b, client_b) = tenants
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    client_b.post("/api/v1/events", {"events": [event("b-1", session_id="shared")]})
    client_b.put("/api/v1/sessions/shared", {"end_user_id": "b-secret-caller", "metadata": {"plan": "gold"}})
    client_b.post(
        "/api/v1/livekit/metrics", {"session_id": "b-call", "metrics": samples.shifted_metrics(sample)}
    )
    b_totals, b_events = totals(b), list(UsageEvent.objects.for_tenant(b).values_list("event_id", "usage"))

    # same event id, same session ids, and a report mode B already used: all land in A's own namespace
    write = client_a.post(
        "/api/v1/events", {"events": [event("b-1", session_id="shared", usage={"tts_characters": 5})]}
    )
    put = client_a.put("/api/v1/sessions/shared", {"conversation_type": "probe"})
    report = client_a.post(
        "/api/v1/livekit/usage", {"session_id": "b-call", "usage": samples.final_model_usage(sample)}
    )

    assert write.json()["accepted"] == 1
    assert put.status_code == 200  # A's own session "shared", created by A's first event
    assert put.json()["end_user_id"] == "" and put.json()["metadata"] == {}
    assert report.status_code == 200 and report.json()["accepted"] == 3
    assert totals(b) == b_totals
    assert list(UsageEvent.objects.for_tenant(b).values_list("event_id", "usage")) == b_events
    assert Session.objects.get(tenant=b, session_id="shared").end_user_id == "b-secret-caller"
    assert Session.objects.get(tenant=b, session_id="b-call").livekit_report_mode == "metrics"
    assert totals(a)[("tts_characters", "api.openai.com", "gpt-4o-mini")] == 5
