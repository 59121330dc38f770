"""Hostile and malformed input: always a 4xx problem+json naming the field, never a 500, nothing stored."""

import json

import pytest

from tests.usage.builders import event, recent, stored_count
from usage.models import Session, UsageEvent

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"


def batch_text(**overrides) -> str:
    return json.dumps({"events": [event("e-1", **overrides)]})


def usage_text(raw_quantity: str) -> str:
    """A batch whose tts_characters quantity is the raw JSON text given (to send what json.dumps cannot)."""
    return batch_text(usage={"tts_characters": "__Q__"}).replace('"__Q__"', raw_quantity)


HOSTILE_BODIES = {
    "truncated json": '{"events": [{"id": "e1", "usage":',
    "empty body": "",
    "json array": "[]",
    "json string": '"events"',
    "json null": "null",
    "duplicate keys": '{"events": [], "events": [' + json.dumps(event()) + "]}",
    "NaN literal": usage_text("NaN"),
    "Infinity literal": usage_text("Infinity"),
    "-Infinity literal": usage_text("-Infinity"),
    "number overflowing to inf": usage_text("1e309"),
    "NaN string": usage_text('"NaN"'),
    "inf string": usage_text('"inf"'),
    "negative": usage_text("-5"),
    "negative string": usage_text('"-5"'),
    "exponent string": usage_text('"1e3"'),
    "too many significant digits": usage_text("1234567890.1234567"),
    "too large": usage_text("1e30"),
    "5000-digit integer": usage_text("9" * 5000),
    "seven decimal places": usage_text("0.0000001"),
    "boolean quantity": usage_text("true"),
    "object quantity": usage_text('{"v": 1}'),
    "list quantity": usage_text("[1]"),
    "null quantity": usage_text("null"),
    "quantity with spaces": usage_text('" 12"'),
    "unknown meter": batch_text(usage={"gpu_seconds": 1}),
    "meter in capitals": batch_text(usage={"TTS_CHARACTERS": 1}),
    "meter with trailing space": batch_text(usage={"tts_characters ": 1}),
    "meter with NUL": batch_text(usage={"tts_characters\u0000": 1}),
    "empty usage": batch_text(usage={}),
    "usage not an object": batch_text(usage=[1, 2]),
    "naive timestamp": batch_text(timestamp="2026-11-20T10:00:00"),
    "epoch number timestamp": batch_text(timestamp=1795000000),
    "epoch milliseconds string": batch_text(timestamp="1795000000000"),
    "impossible date": batch_text(timestamp="2026-02-30T00:00:00Z"),
    "leap second": batch_text(timestamp="2026-06-30T23:59:60Z"),
    "far future": batch_text(timestamp="9999-12-31T23:59:59Z"),
    "far past": batch_text(timestamp="1999-01-01T00:00:00Z"),
    "US date": batch_text(timestamp="11/20/2026"),
    "NUL in session id": batch_text(session_id="call\u00001"),
    "NUL in metadata value": batch_text(metadata={"note": "a\u0000b"}),
    "lone surrogate in model": batch_text().replace('"gpt-4o-mini"', '"gpt\\ud800"'),
    "session id too long": batch_text(session_id="s" * 129),
    "id too long": json.dumps({"events": [event("x" * 129)]}),
    "id with slash": json.dumps({"events": [event("a/b")]}),
    "id empty": json.dumps({"events": [event("")]}),
    "id not a string": json.dumps({"events": [event(17)]}),
    "huge number in metadata": batch_text(metadata={"n": 1}).replace('"n": 1', '"n": 1e400'),
    "huge integer in metadata": batch_text(metadata={"n": 10**20}),
    "nested metadata": batch_text(metadata={"a": {"b": 1}}),
    "metadata not an object": batch_text(metadata="x"),
    "too many metadata keys": batch_text(metadata={f"k{i}": i for i in range(51)}),
    "metadata value too long": batch_text(metadata={"k": "v" * 501}),
    "unknown event field": batch_text(tenant_id=2),
    "unknown top-level field": json.dumps({"events": [event()], "tenant": "other"}),
    "no events": json.dumps({"events": []}),
    "events not a list": json.dumps({"events": {"id": "x"}}),
    "too many events": json.dumps({"events": [event(f"e{i}", timestamp=recent()) for i in range(1001)]}),
    "deep nesting": '{"events": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "event not an object": json.dumps({"events": ["e1"]}),
    "invalid utf-8": b'{"events": [{"id": "\xff\xfe"}]}',
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_body_gets_a_4xx_problem_and_stores_nothing(agent_client, body):
    response = agent_client.post(URL, body)

    assert 400 <= response.status_code < 500, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == response.status_code and problem["detail"]
    assert stored_count() == 0 and not Session.objects.exists()


def test_field_errors_name_the_field(agent_client):
    response = agent_client.post(URL, usage_text("-5"))
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"pointer": "/events/0/usage/tts_characters", "detail": "must be ≥ 0"}
    ]


def test_oversized_body_is_refused_with_413(agent_client):
    padding = "x" * 500
    events = [event(f"e{i}", metadata={f"k{j}": padding for j in range(5)}) for i in range(450)]
    body = json.dumps({"events": events})
    assert len(body) > 1024 * 1024

    response = agent_client.post(URL, body)

    assert response.status_code == 413
    assert stored_count() == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_only_json_is_parsed(agent_client, content_type):
    response = agent_client.post(URL, batch_text(), content_type=content_type)
    assert response.status_code == 415
    assert stored_count() == 0


def test_zero_and_exponent_numbers_are_accepted_with_a_documented_canonical_form(agent_client, tenant):
    response = agent_client.post(
        URL,
        json.dumps(
            {
                "events": [
                    event("a", usage={"tts_characters": 0}),
                    event("b", usage={"tts_characters": "0.000000"}),
                ]
            }
        ).replace('"tts_characters": 0}', '"tts_characters": 1E+3}'),
    )
    assert response.status_code == 200
    assert UsageEvent.objects.get(event_id="a").usage == {"tts_characters": "1000"}
    assert UsageEvent.objects.get(event_id="b").usage == {"tts_characters": "0"}


def test_unicode_text_round_trips(agent_client):
    response = agent_client.post(URL, batch_text(metadata={"caller": "Zoë 🙂", "formula": "=HYPERLINK()"}))
    assert response.status_code == 200
    assert UsageEvent.objects.get().metadata == {"caller": "Zoë 🙂", "formula": "=HYPERLINK()"}
