import pytest
from django.test import Client


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
