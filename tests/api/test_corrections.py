"""Event corrections through the API (issue 16 part 2, decision 021): ``POST /api/v1/events/{id}/retract`` and
events carrying ``replaces``.

Every expected figure is computed here from the events that should still count, with this file's own price
table and rounding (not billing.pricing): rollups, session times, GET /usage, GET /sessions/{id}, the balance and
the draft invoice must all equal it after each correction.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.utils import timezone

from billing import credits, invoicing
from billing.models import CallCost
from notifications.models import Event
from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import iso, totals
from usage import corrections, ingest, validation
from usage.models import Session, UsageEvent
from usage.rollups import rollup_drift

pytestmark = pytest.mark.django_db

M = Decimal(1_000_000)
BASE_FEE = Decimal("10.00")
# Per-unit prices (per one unit): the test's own table.
UNIT = {
    "tts_characters": Decimal("0.01"),
    "llm_input_text_tokens": Decimal("2.50") / M,
    "llm_output_text_tokens": Decimal("10.00") / M,
}
PRICES = [
    {"meter_id": "tts_characters", "unit_amount": Decimal("0.01"), "unit_size": Decimal(1)},
    {"meter_id": "llm_input_text_tokens", "unit_amount": Decimal("2.50"), "unit_size": M},
    {"meter_id": "llm_output_text_tokens", "unit_amount": Decimal("10.00"), "unit_size": M},
]
CENT = Decimal("0.01")


@pytest.fixture
def billed(tenant):
    """Subscribed from this period on (one base fee unbilled), with credit so the balance is a plain number."""
    subscribe(
        tenant,
        make_plan(base_fee=str(BASE_FEE), prices=PRICES),
        starts_on=invoicing.current_period(tenant)[0],
    )
    credits.grant(tenant, "100.00", source="purchased", reason="first top-up")
    return tenant


def moment(second: int) -> str:
    """A time in the current period and the accepted window, ``second`` seconds after a base ten minutes ago."""
    now = timezone.now()
    start = now.astimezone(UTC).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )  # the tenant is in UTC
    return iso(max(now - timedelta(minutes=10), start) + timedelta(seconds=second))


def tts(event_id: str, chars: int, second: int = 0, session: str = "call-1", **extra) -> dict:
    return {
        "id": event_id,
        "timestamp": moment(second),
        "session_id": session,
        "provider": "Cartesia",
        "model": "sonic-3",
        "usage": {"tts_characters": chars},
        **extra,
    }


def llm(event_id: str, tokens_in: int, tokens_out: int, second: int = 0, session: str = "call-1", **extra):
    return {
        "id": event_id,
        "timestamp": moment(second),
        "session_id": session,
        "provider": "api.openai.com",
        "model": "gpt-4o-mini",
        "usage": {"llm_input_text_tokens": tokens_in, "llm_output_text_tokens": tokens_out},
        **extra,
    }


def send(api: AgentClient, *events: dict, status: int = 200):
    response = api.post("/api/v1/events", {"events": list(events)})
    assert response.status_code == status, response.content
    return response.json()


def retract(api: AgentClient, event_id: str, status: int = 200, **body):
    response = (
        api.post(f"/api/v1/events/{event_id}/retract", body)
        if body
        else api.client.post(f"/api/v1/events/{event_id}/retract")
    )
    assert response.status_code == status, response.content
    return response.json()


class Expected:
    """What the events that count should add up to, worked out here."""

    def __init__(self, events: list[dict]):
        self.events = events

    def quantities(self) -> dict[tuple[str, str, str], Decimal]:
        found: dict[tuple, Decimal] = defaultdict(Decimal)
        for e in self.events:
            for meter, q in e["usage"].items():
                found[(meter, e["provider"], e["model"])] += Decimal(str(q))
        return dict(found)

    def session_cost(self, session: str) -> Decimal:
        return sum(
            (
                Decimal(str(q)) * UNIT[meter]
                for e in self.events
                if e["session_id"] == session
                for meter, q in e["usage"].items()
            ),
            Decimal(0),
        )

    def line_amounts(self) -> dict[tuple[str, str, str], Decimal]:
        return {
            key: (q * UNIT[key[0]]).quantize(CENT, rounding=ROUND_HALF_UP)
            for key, q in self.quantities().items()
        }

    def invoice_total(self) -> Decimal:
        return BASE_FEE + sum(self.line_amounts().values(), Decimal(0))

    def session_times(self, session: str) -> tuple[datetime | None, datetime | None]:
        times = [
            validation.parse_timestamp(e["timestamp"]) for e in self.events if e["session_id"] == session
        ]
        return (min(times), max(times)) if times else (None, None)


def check_everything(api: AgentClient, tenant, expected: Expected, sessions=("call-1",)) -> None:
    """Rollups, sessions, GET /usage, GET /sessions/{id}, the balance and the draft invoice all equal the
    independent computation; and the rollups agree with the raw events that count."""
    assert totals(tenant) == {k: v.normalize() for k, v in expected.quantities().items()}
    assert rollup_drift(tenant.pk) == []
    for session_id in sessions:
        session = Session.objects.get(tenant=tenant, session_id=session_id)
        assert (session.first_usage_at, session.last_usage_at) == expected.session_times(session_id)
        body = api.get(f"/api/v1/sessions/{session_id}").json()
        assert Decimal(body["cost_precise"]) == expected.session_cost(session_id)
        assert {(u["meter"], u["provider"], u["model"]): Decimal(u["quantity"]) for u in body["usage"]} == {
            k: q
            for k, q in Expected([e for e in expected.events if e["session_id"] == session_id])
            .quantities()
            .items()
        }
    usage = api.get("/api/v1/usage", group_by="meter,model").json()
    got: dict[str, Decimal] = defaultdict(Decimal)
    for row in usage["results"]:
        for meter, q in row["quantity"].items():
            got[meter] += Decimal(q)
    want: dict[str, Decimal] = defaultdict(Decimal)
    for (meter, _, _), q in expected.quantities().items():
        want[meter] += q
    assert {m: q for m, q in got.items() if q} == dict(want)
    balance = api.get("/api/v1/balance").json()
    assert Decimal(balance["unbilled_usage"]) == expected.invoice_total()
    assert Decimal(balance["available"]) == Decimal(100) - expected.invoice_total()
    draft = invoicing.generate_invoice(tenant.pk, invoicing.current_period(tenant)[0])
    assert draft.total == expected.invoice_total()
    lines = {
        (line.meter, line.provider, line.model): line.amount for line in draft.lines.filter(kind="usage")
    }
    assert lines == expected.line_amounts()


def test_a_retraction_takes_the_event_out_of_everything_that_counts(agent_client, billed):
    sent = [
        tts("t-1", 1000, 1),
        llm("l-1", 120_000, 4_000, 2),
        tts("t-2", 333, 3),
        tts("t-3", 250, 4, session="call-2"),
    ]
    send(agent_client, *sent)
    check_everything(agent_client, billed, Expected(sent), ("call-1", "call-2"))

    body = retract(agent_client, "t-2", reason="counted twice")  # the last usage of call-1
    assert body["id"] == "t-2" and body["reason"] == "counted twice" and body["session_id"] == "call-1"
    assert body["removed_usage"] == {"tts_characters": "333"} and body["retracted_at"]
    remaining = [sent[0], sent[1], sent[3]]
    check_everything(agent_client, billed, Expected(remaining), ("call-1", "call-2"))

    stored = UsageEvent.objects.get(tenant=billed, event_id="t-2")
    assert (
        stored.usage == {"tts_characters": "333"} and stored.is_retracted and stored.retracted_by == "agent"
    )
    # its id stays taken: the original resent is a duplicate, a new payload under it a conflict; neither counts
    assert send(agent_client, sent[2])["duplicates"] == 1
    assert send(agent_client, tts("t-2", 999, 3))["conflicts"] == 1
    check_everything(agent_client, billed, Expected(remaining), ("call-1", "call-2"))

    # the only event of a session: the session has no usage left, and no cost
    retract(agent_client, "t-3")
    check_everything(agent_client, billed, Expected(remaining[:2]), ("call-1", "call-2"))
    assert CallCost.objects.filter(tenant=billed, session_id="call-2").count() == 0


def test_retracting_again_answers_the_same_and_another_reason_or_way_is_a_conflict(agent_client, billed):
    sent = [tts("t-1", 500, 1), tts("t-2", 70, 2), tts("t-3", 30, 3)]
    send(agent_client, *sent)
    first = retract(agent_client, "t-1", reason="test call")
    assert retract(agent_client, "t-1", reason="test call") == first
    assert (
        Event.objects.filter(tenant_id=billed.pk, type=corrections.USAGE_CORRECTED).count() == 1
    )  # the resend recorded nothing

    refused = retract(agent_client, "t-1", status=409, reason="another reason")
    assert refused["type"].endswith("/event-already-corrected") and "test call" in refused["detail"]
    assert (
        retract(agent_client, "t-1", status=409)["title"] == "Event already corrected"
    )  # no reason ≠ a reason
    # without a reason both times: the same answer again
    assert retract(agent_client, "t-2") == retract(agent_client, "t-2")
    # replacing a retracted event is refused too, naming "replaces", and stores nothing
    refused = send(agent_client, tts("t-1b", 450, 1, replaces="t-1"), status=409)
    assert (
        refused["errors"] == [{"pointer": "/events/0/replaces", "detail": refused["errors"][0]["detail"]}]
        and "retracted" in refused["errors"][0]["detail"]
    )
    assert '"replaces"' in refused["detail"] or "/replaces" in refused["detail"]
    assert not UsageEvent.objects.filter(event_id="t-1b").exists()
    check_everything(agent_client, billed, Expected([sent[2]]))


def test_replacements_lower_higher_and_chained_and_resent(agent_client, billed):
    original = [tts("t-1", 1000, 1), llm("l-1", 50_000, 2_000, 2)]
    send(agent_client, *original)

    lower = tts("t-1b", 800, 1, replaces="t-1")
    answer = send(agent_client, lower)
    assert answer["accepted"] == 1 and answer["replacements"] == [
        {"index": 0, "id": "t-1b", "replaces": "t-1"}
    ]
    check_everything(agent_client, billed, Expected([lower, original[1]]))

    # a correction of the correction (a chain), to a higher quantity and another model: allowed
    higher = {**tts("t-1c", 1200, 5, replaces="t-1b"), "model": "sonic-2"}
    send(agent_client, higher)
    check_everything(agent_client, billed, Expected([higher, original[1]]))
    assert UsageEvent.objects.get(event_id="t-1").retracted_by_event_id == "t-1b"
    assert UsageEvent.objects.get(event_id="t-1b").retracted_by_event_id == "t-1c"

    # the same batch again: a duplicate, nothing retracted or counted again, the same replacements list empty
    again = send(agent_client, higher)
    assert (again["accepted"], again["duplicates"], again["replacements"]) == (0, 1, [])
    # and the replacement of a replacement's original resent too (t-1 stays replaced by t-1b)
    assert send(agent_client, lower)["duplicates"] == 1
    check_everything(agent_client, billed, Expected([higher, original[1]]))

    # a replacement batch with new usage beside it
    fixed = llm("l-1b", 40_000, 2_500, 2, replaces="l-1")
    new = tts("t-9", 5, 9)
    answer = send(agent_client, new, fixed)
    assert answer["accepted"] == 2 and answer["replacements"] == [
        {"index": 1, "id": "l-1b", "replaces": "l-1"}
    ]
    check_everything(agent_client, billed, Expected([higher, fixed, new]))
    events = Event.objects.filter(tenant_id=billed.pk, type=corrections.USAGE_CORRECTED).order_by("pk")
    assert [e.data["events"] for e in events] == [
        [{"event_id": "t-1", "retracted_by": "replacement", "replaced_by": "t-1b", "reason": ""}],
        [{"event_id": "t-1b", "retracted_by": "replacement", "replaced_by": "t-1c", "reason": ""}],
        [{"event_id": "l-1", "retracted_by": "replacement", "replaced_by": "l-1b", "reason": ""}],
    ]


def test_a_second_correction_of_one_event_is_a_conflict_and_changes_nothing(agent_client, billed):
    sent = [tts("t-1", 1000, 1), tts("t-2", 10, 2)]
    send(agent_client, *sent)
    first = tts("t-1b", 900, 1, replaces="t-1")
    send(agent_client, first)
    before = (totals(billed), UsageEvent.objects.count())

    refused = send(agent_client, tts("t-1x", 700, 1, replaces="t-1"), tts("t-new", 1, 3), status=409)
    assert refused["errors"][0]["pointer"] == "/events/0/replaces"
    assert "t-1b" in refused["errors"][0]["detail"]  # it says which event to correct instead
    assert retract(agent_client, "t-1", status=409, reason="oops")["type"].endswith(
        "/event-already-corrected"
    )
    assert (totals(billed), UsageEvent.objects.count()) == before
    check_everything(agent_client, billed, Expected([first, sent[1]]))


def test_only_the_agent_that_sent_an_event_corrects_it_and_another_tenants_is_not_found(
    agent_client, billed, agent
):
    sent = [tts("t-1", 1000, 1), tts("t-2", 5, 2)]
    send(agent_client, *sent)
    colleague = AgentClient(api_key_for(AgentFactory(tenant=billed)))
    refused = retract(colleague, "t-1", status=403)
    assert refused["type"].endswith("/event-of-another-agent") and refused["errors"] == []
    refused = send(colleague, tts("t-1b", 1, 1, session="own", replaces="t-1"), status=403)
    assert refused["errors"] == [{"pointer": "/events/0/replaces", "detail": refused["errors"][0]["detail"]}]

    stranger = AgentClient(api_key_for(AgentFactory(tenant=TenantFactory())))
    for api in (stranger, AgentClient(api_key_for(AgentFactory(tenant=billed)))):
        assert retract(api, "nope", status=404)["type"].endswith("/event-not-found")
    send(stranger, tts("t-2", 7, 2))  # its own t-2: ids are per tenant
    assert retract(stranger, "t-1", status=404)["title"] == "Event not found"
    refused = send(stranger, tts("t-1b", 1, 1, replaces="t-1"), status=404)
    assert refused["errors"][0]["pointer"] == "/events/0/replaces"
    retract(stranger, "t-2")  # retracts its own t-2, not ours
    assert not UsageEvent.objects.get(tenant=billed, event_id="t-2").is_retracted
    assert not UsageEvent.objects.filter(event_id="t-1b").exists()
    check_everything(agent_client, billed, Expected(sent))


def test_a_bad_replaces_refuses_the_whole_batch_and_stores_nothing(agent_client, billed, agent):
    send(agent_client, tts("t-1", 1000, 1), tts("t-2", 200, 2), tts("t-3", 30, 3, session="call-2"))
    before = (totals(billed), UsageEvent.objects.count(), Session.objects.count())
    good_new, good_fix = tts("n-1", 1, 4, session="call-9"), tts("t-1b", 900, 1, replaces="t-1")

    cases = [
        # (batch, status, pointer)
        ([good_new, good_fix, tts("x-1", 1, 1, replaces="unknown")], 404, "/events/2/replaces"),
        ([good_fix, tts("t-2b", 1, 2, replaces="t-2", session="call-2")], 422, "/events/1/session_id"),
        ([good_fix, tts("t-1c", 1, 1, replaces="t-1")], 422, "/events/1/replaces"),  # two corrections of one
        ([tts("n-2", 1, 5), tts("n-3", 1, 6, replaces="n-2")], 422, "/events/1/replaces"),  # one of the batch
        ([tts("n-4", 1, 6, replaces="n-4")], 422, "/events/0/replaces"),  # itself
        ([tts("n-5", 1, 6, replaces="bad id!")], 422, "/events/0/replaces"),  # not an identifier
    ]
    for batch, status, pointer in cases:
        refused = send(agent_client, *batch, status=status)
        assert pointer in [e["pointer"] for e in refused["errors"]], refused
        assert (totals(billed), UsageEvent.objects.count(), Session.objects.count()) == before
        assert not UsageEvent.objects.filter(retracted_at__isnull=False).exists()

    # an event older than 35 days can no longer be corrected (stored with the clock of its day)
    then = timezone.now() - timedelta(days=40)
    old = {**tts("old-1", 10, 0), "timestamp": iso(then)}
    batch = validation.validate_event_batch({"events": [old]}, validation.active_meter_codes(), now=then)
    ingest.store_events(billed, agent, batch, now=then)
    refused = send(agent_client, {**tts("old-1b", 9, 0), "replaces": "old-1"}, status=422)
    assert refused["type"].endswith("/event-not-correctable") and refused["errors"][0]["pointer"] == (
        "/events/0/replaces"
    )
    assert "35 days" in refused["errors"][0]["detail"]
    assert retract(agent_client, "old-1", status=422)["title"] == "Event too old to correct"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/events/./retract", None, 404),
        ("/api/v1/events/a%2Fb/retract", None, 404),
        ("/api/v1/events/" + "x" * 129 + "/retract", None, 404),
        ("/api/v1/events/t-1/retract", {"reason": "x", "why": "y"}, 400),
        ("/api/v1/events/t-1/retract", {"reason": 5}, 400),
        ("/api/v1/events/t-1/retract", {"reason": "x" * 501}, 400),
        ("/api/v1/events/t-1/retract", {"reason": "nul\u0000"}, 400),
        ("/api/v1/events/t-1/retract", '{"reason": "a", "reason": "b"}', 400),
        ("/api/v1/events/t-1/retract", "[1]", 400),
    ],
)
def test_bad_retractions_are_problems_and_change_nothing(agent_client, billed, path, body, status):
    send(agent_client, tts("t-1", 10, 1))
    response = agent_client.client.post(path) if body is None else agent_client.post(path, body)
    assert response.status_code == status and response["Content-Type"] == "application/problem+json"
    assert not UsageEvent.objects.get(event_id="t-1").is_retracted


def test_a_retraction_needs_json_when_it_has_a_body(agent_client, billed):
    send(agent_client, tts("t-1", 10, 1))
    response = agent_client.post("/api/v1/events/t-1/retract", "reason=x", content_type="text/plain")
    assert response.status_code == 415
    assert retract(agent_client, "t-1", reason="")["reason"] == ""


def test_livekit_usage_can_be_retracted_and_the_livekit_endpoints_answer_as_before(agent_client, billed):
    from tests import livekit_samples as samples

    report = {
        "session_id": "lk-1",
        "metrics": samples.shifted_metrics(samples.load("pipeline_deepgram_openai_cartesia")),
    }
    response = agent_client.post("/api/v1/livekit/metrics", report)
    assert response.status_code == 200 and "replacements" not in response.json()
    before = totals(billed)
    event = UsageEvent.objects.filter(tenant=billed, session_id="lk-1").order_by("event_id").first()
    retract(agent_client, event.event_id)
    after = totals(billed)
    for meter, quantity in event.usage.items():
        key = (meter, event.provider, event.model)
        assert after.get(key, Decimal(0)) == before[key] - Decimal(quantity)
    assert rollup_drift(billed.pk) == []
    # a resend of the whole report is a duplicate: the retracted metric is not counted again
    again = agent_client.post("/api/v1/livekit/metrics", report)
    assert again.json()["accepted"] == 0 and totals(billed) == after
