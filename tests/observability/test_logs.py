"""Structured logs: one request id per HTTP request, in the response and in every line the request logs; one
line per 4xx (docs/decisions/009-observability.md)."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from notifications import outbox
from notifications.models import Event
from notifications.tasks import dispatch_pending_events
from observability import logs
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db
FRESH_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(params=["json", "plain"])
def log_lines(request):
    """What the configured console handler writes, in either format; returns a function that reads the
    lines written so far."""
    handler = next(
        h for h in logging.getLogger().handlers if any(isinstance(f, logs.Context) for f in h.filters)
    )
    stream = io.StringIO()
    previous_stream = handler.setStream(stream)
    previous_formatter = handler.formatter
    handler.setFormatter(logs.Json() if request.param == "json" else logs.Plain())
    yield lambda: stream.getvalue().splitlines()
    handler.setStream(previous_stream)
    handler.setFormatter(previous_formatter)


def request_ids_in(line: str) -> set[str]:
    """The request id of a line: its ``request_id`` field (JSON) or the bracketed id (plain)."""
    if line.startswith("{"):
        found = json.loads(line).get("request_id")
        return {found} if found else set()
    match = re.search(r" \[([^\]]+)\]:", line)
    return set(match.group(1).split()) if match else set()


def message_of(line: str) -> str:
    return json.loads(line)["message"] if line.startswith("{") else line.partition("]: ")[2]


def failed_login(**headers):
    user = MembershipFactory().user
    return Client().post(
        reverse("portal:login"), {"username": user.username, "password": "not-the-password"}, **headers
    )


def test_a_request_gets_a_fresh_id_in_its_response_and_in_every_line_it_logs(log_lines):
    response = failed_login()

    request_id = response["X-Request-ID"]
    assert FRESH_ID.fullmatch(request_id)
    lines = log_lines()
    assert len(lines) >= 2, lines  # the lockout bookkeeping's warning and the access line
    assert all(request_ids_in(line) == {request_id} for line in lines), lines
    assert [message_of(line) for line in lines].count(f'"POST {reverse("portal:login")}" 200') == 1


@pytest.mark.parametrize("log_lines", ["json"], indirect=True)
def test_json_lines_carry_the_fields_an_operator_filters_on(log_lines):
    response = Client().get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a9c")
    (line,) = [json.loads(line) for line in log_lines()]
    assert response["X-Request-ID"] == "lb-7f3a9c"
    assert {k: line[k] for k in ("level", "method", "path", "status", "endpoint", "request_id")} == {
        "level": "INFO",
        "method": "GET",
        "path": "/healthz",
        "status": 200,
        "endpoint": "healthz",
        "request_id": "lb-7f3a9c",
    }
    assert line["duration_ms"] >= 0 and line["time"]


@pytest.mark.parametrize(
    "incoming",
    ["0f8fc6b2-31a4-4c5e-9a1e-6f3b1f0b8a77", "Root.1-5759e988_bd862e3f:x", "a", "Z" * 128],
)
def test_a_well_formed_incoming_id_is_kept(log_lines, incoming):
    response = failed_login(HTTP_X_REQUEST_ID=incoming)
    assert response["X-Request-ID"] == incoming
    assert all(request_ids_in(line) == {incoming} for line in log_lines())


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\nINJECTED fake log line",
        "abc\r\nSet-Cookie: INJECTED=1",
        "INJECTED" + "x" * 1_048_576,
        "Z" * 129,
        "INJECTED id with spaces",
        "INJECTED\x00nul",
        "-INJECTED",
        "INJECTED-é",
        "",
    ],
)
def test_a_hostile_incoming_id_is_replaced_and_never_logged(log_lines, hostile):
    response = failed_login(HTTP_X_REQUEST_ID=hostile)

    request_id = response["X-Request-ID"]
    assert FRESH_ID.fullmatch(request_id) and request_id != hostile
    output = "\n".join(log_lines())
    assert "INJECTED" not in output and "Z" * 129 not in output
    assert len(output) < 10_000
    assert all(request_ids_in(line) == {request_id} for line in log_lines())


@pytest.mark.parametrize(
    ("path", "status"),
    [("/no-such-page/", 404), ("/api/v1/usage", 401), ("/api/v1/sessions/x%00y", 404), ("/metrics", 404)],
)
def test_a_4xx_is_logged_once(log_lines, path, status):
    response = Client().get(path)
    assert response.status_code == status
    lines = log_lines()
    assert len(lines) == 1, lines
    assert str(status) in lines[0] and request_ids_in(lines[0]) == {response["X-Request-ID"]}


def test_lines_logged_by_a_task_carry_its_task_id(log_lines, eager_tasks, tenant):
    def refuse(event):
        raise RuntimeError("subscriber down")

    outbox.subscribe("test.refused", refuse)
    try:
        outbox.record(tenant.pk, "test.refused", {})
        Event.objects.update(created_at=timezone.now() - timedelta(hours=1))
        result = dispatch_pending_events.delay()
    finally:
        outbox.unsubscribe("test.refused", refuse)

    (line,) = [line for line in log_lines() if "dispatching event" in line]
    if line.startswith("{"):
        record = json.loads(line)
        assert (record["task_id"], record["task_name"]) == (result.id, dispatch_pending_events.name)
        assert "RuntimeError: subscriber down" in record["exc_info"]
    else:
        assert f"[{result.id}]" in line
