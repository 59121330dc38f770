"""``/api/schema/`` describes the API as it answers: its examples are accepted as shown, every operation documents
its error answers, and schemathesis, fuzzing the live server from the schema, finds nothing (issue 12.8, 18.4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from django.test import Client

from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for

pytestmark = pytest.mark.django_db

WRITES = {"post", "put"}
# The answers every operation can give: a key problem and the rate limit; writes also a body problem.
COMMON = {"401", "429"}
TIME_BUDGET_SECONDS = 240
WRITE_ERRORS = {"400", "409", "413", "415"}


def schema() -> dict:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_operation_documents_its_error_answers_as_problem_json():
    for path, method, operation in operations(schema()):
        codes = set(operation["responses"])
        expected = COMMON | (WRITE_ERRORS if method in WRITES else set())
        if path == "/api/v1/sessions/{session_id}" and method == "get":
            expected |= {"404"}
        if path in ("/api/v1/events", "/api/v1/livekit/metrics", "/api/v1/livekit/usage"):
            expected |= {"422"}
        if path.endswith("/release"):  # idempotent: an ended hold is released again with a 200, no conflict
            expected -= {"409"}
        assert expected <= codes, (method, path, expected - codes)
        for code in codes - {"200", "201"}:
            answer = operation["responses"][code]
            assert list(answer["content"]) == ["application/problem+json"], (method, path, code)
            assert answer["description"] and "``" not in answer["description"]


def test_descriptions_are_written_for_api_users_not_taken_from_code():
    document = schema()
    texts = [op.get("description", "") + op.get("summary", "") for _, _, op in operations(document)]
    texts += [c.get("description", "") for c in document["components"]["schemas"].values()]
    assert all(op.get("description") for _, _, op in operations(document))
    for text in texts:
        assert "``" not in text and "Shared flow" not in text and "usage.ingest" not in text, text


def test_the_schema_states_the_validators_limits():
    document = schema()
    components = document["components"]["schemas"]
    batch = components["EventBatch"]["properties"]["events"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)
    assert components["EventBatch"]["additionalProperties"] is False
    assert components["Event"]["additionalProperties"] is False
    assert components["Quantities"]["minProperties"] == 1
    metadata = components["Metadata"]
    assert metadata["propertyNames"]["maxLength"] == 40 and metadata["maxProperties"] == 50
    assert {"object", "array"}.isdisjoint(t.get("type") for t in metadata["additionalProperties"]["anyOf"])
    assert components["Identifier"]["maxLength"] == 128 and components["Identifier"]["pattern"].endswith("+$")
    assert components["Timestamp"]["format"] == "date-time" and components["Timestamp"]["pattern"]
    for name in ("Session", "SessionUsage"):
        for field in ("started_at", "ended_at"):
            assert components[name]["properties"][field]["type"] == ["string", "null"]
    for name in ("Usage", "SessionUsage", "Budget"):  # read responses are typed, not free-form objects
        assert components[name]["properties"] and components[name]["required"]


def test_every_example_in_the_schema_is_accepted_as_is():
    """What Swagger UI's "Try it out" sends (the first example of each body, and the parameters' examples)."""
    tenant = TenantFactory()
    subscribe(tenant, make_plan())
    api = AgentClient(api_key_for(AgentFactory(tenant=tenant)))
    document = schema()
    sent = 0
    created_hold = None
    for method in ("post", "put", "get"):  # writes first: the read examples name what they wrote
        for path, verb, operation in operations(document):
            if verb != method:
                continue
            url = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "hold_id":
                    # a server-made id: the one the create example answered with
                    url = url.replace("{hold_id}", str(created_hold))
                elif parameter["in"] == "path":
                    url = url.replace(f"{{{parameter['name']}}}", quote(parameter["example"], safe=""))
            bodies = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            examples = [e["value"] for e in bodies.get("examples", {}).values()]
            assert examples or method == "get", f"{method} {path} has no example body"
            for body in examples or [None]:
                if method == "get":
                    response = api.client.get(url)
                else:
                    response = api.client.generic(
                        method.upper(), url, json.dumps(body), content_type="application/json"
                    )
                assert 200 <= response.status_code < 300, (method, url, response.content)
                if path == "/api/v1/authorizations":
                    created_hold = response.json()["id"]
                sent += 1
    assert sent == 13  # 9 before the balance and the three authorization writes (2 event examples)


def test_a_resent_example_is_a_duplicate_and_a_later_schema_gives_new_events():
    api = AgentClient(api_key_for(AgentFactory()))
    first = schema()["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    body = next(iter(first.values()))["value"]
    assert api.post("/api/v1/events", body).json()["accepted"] == 2
    assert api.post("/api/v1/events", body).json()["duplicates"] == 2


@pytest.mark.slow
def test_schemathesis_finds_no_failure_against_the_live_server(live_server, transactional_db, tmp_path: Path):
    """All phases and checks, a fixed seed, bounded: 30 examples per operation and phase (about 850 requests
    and a minute), and a time budget the run must stay within (its ``--max-time`` would instead repeat
    fuzzing until the budget is spent). Positive-data acceptance is left out: the schema cannot say
    everything the server checks (the 35-day window, the meter catalogue, a session of another agent), so
    valid-looking data may rightly get a 4xx."""
    tenant = TenantFactory()
    subscribe(tenant, make_plan())
    key = api_key_for(AgentFactory(tenant=tenant))
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{live_server.url}/api/schema/",
            "--header",
            f"Authorization: Bearer {key}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--seed",
            "20261112",
            "--max-examples",
            "30",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIME_BUDGET_SECONDS,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    result = json.loads(report.read_text())
    print(
        f"schemathesis: {result['operations']['tested']} operations, {result['test_cases']['generated']} test "
        f"cases, {result['test_cases']['with_failures']} failures, {result['running_time']:.0f} s"
    )
    assert result["complete"] and result["failures"] == [] and result["errors"] == []
    assert result["operations"]["tested"] == result["operations"]["total"] == 12
    assert {phase["status"] for phase in result["phases"].values()} == {"success"}
