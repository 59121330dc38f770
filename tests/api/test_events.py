"""POST /api/v1/events: DESIGN §4 semantics (atomic batches, dedupe forever, conflicts), and hostile and
malformed input (always a 4xx problem+json naming the field, never a 500, nothing stored)."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from api import events
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import event, iso, recent, stored_count, totals
from usage.models import Meter, Session, UsageEvent

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"


def test_accepted_batch_is_stored_and_rolled_up(agent_client, tenant):
    response = agent_client.post(URL, {"events": [event("a"), event("b", usage={"tts_characters": "12.5"})]})

    assert response.status_code == 200
    body = response.json()
    # this tenant has no plan: its usage is stored and reported as unpriced (tests/api/test_unpriced.py)
    assert {entry["reason"] for entry in body.pop("unpriced")} == {"no_plan"}
    assert body == {"accepted": 2, "duplicates": 0, "conflicts": 0, "conflicting_events": []}
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
    body = response.json()
    assert [entry["events"] for entry in body.pop("unpriced")] == [1, 1]  # "b" only: no plan, so unpriced
    assert body == {
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
    events._meter_cache = (0.0, frozenset())  # the per-process cache would otherwise hide the edit for 10 s
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
    agent_client.post(URL, {"events": [event("a", session_id=None)]})
    sibling = AgentClient(api_key_for(AgentFactory(tenant=tenant)))
    response = sibling.post(URL, {"events": [event("a", session_id=None)]})
    assert response.json()["conflicts"] == 1


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
