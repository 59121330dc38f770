import pytest
from django.test import Client

from config.celery import app
from tests import livekit_samples as samples
from usage import tasks
from usage.models import AgentRollup, UsageRollup


@pytest.mark.slow
def test_verify_rollups_runs_on_a_real_worker_and_finds_drift_only_when_there_is_some(
    celery_worker, agent_client, tenant
):
    sample = samples.load("realtime_openai_gpt_realtime")
    agent_client.post(
        "/api/v1/livekit/metrics", {"session_id": "s", "metrics": samples.shifted_metrics(sample)}
    )

    assert tasks.verify_rollups.delay(tenant.pk).get(timeout=30) == []

    # Each rollup table is checked against the events on its own: first break only the per-agent rows…
    AgentRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").update(quantity=2)
    drift = tasks.verify_rollups.delay(tenant.pk).get(timeout=30)
    tampered = AgentRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").count()
    assert len(drift) == tampered >= 1
    assert {(d["rollup"], d["session_id"], d["rollup_quantity"]) for d in drift} == {
        ("usage_agentrollup", None, "2.000000")
    }

    # …then the per-session ones too: one entry per tampered row (a session straddling an hour has two)
    UsageRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").update(quantity=1)
    drift = tasks.verify_rollups.delay(tenant.pk).get(timeout=30)
    tampered += UsageRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").count()
    assert len(drift) == tampered
    assert {(d["rollup"], d["meter"], d["rollup_quantity"]) for d in drift} == {
        ("usage_agentrollup", "llm_output_audio_tokens", "2.000000"),
        ("usage_usagerollup", "llm_output_audio_tokens", "1.000000"),
    }


@pytest.mark.django_db
def test_healthz_reports_database_and_broker():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


@pytest.mark.django_db
def test_healthz_is_503_when_the_broker_is_unreachable(monkeypatch):
    unreachable = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    monkeypatch.setenv("CELERY_BROKER_URL", unreachable)  # Celery lets this variable override its config
    monkeypatch.setitem(app.conf, "broker_url", unreachable)
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"].startswith("error")


@pytest.mark.django_db
def test_openapi_schema_documents_the_ingestion_api_and_docs_need_no_cdn():
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {
        "/api/v1/events",
        "/api/v1/livekit/metrics",
        "/api/v1/livekit/usage",
        "/api/v1/sessions/{session_id}",
    } <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["AgentAPIKey"]["scheme"] == "bearer"

    docs = Client().get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower() and b"/static/drf_spectacular_sidecar/" in docs.content
