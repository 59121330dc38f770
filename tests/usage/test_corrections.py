"""Event corrections in the usage layer (decision 021): order-free results (a hypothesis property), concurrent
corrections on real PostgreSQL connections, the drift check, what the database itself refuses, and the outbox.

Expected rollups are computed here, bucket by bucket, from the events that should still count."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifications.models import Event
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import iso, totals
from usage import corrections, ingest, tasks, validation
from usage.changes import UsageChange
from usage.models import AgentRollup, Session, UsageEvent, UsageRollup
from usage.rollups import rollup_drift

URL = "/api/v1/events"
PROVIDER = "Cartesia"


def record(event_id: str, at: datetime, session: str, model: str, usage: dict, replaces: str = "") -> dict:
    body = {
        "id": event_id,
        "timestamp": iso(at),
        "session_id": session,
        "provider": PROVIDER,
        "model": model,
        "usage": usage,
    }
    if replaces:
        body["replaces"] = replaces
    return body


def at_once(key: str, jobs: list[tuple[str, object]]) -> list[int]:
    """Each job — ("events", [event, …]) or ("retract", (event id, body)) — from its own thread and database
    connection, all released together; the statuses, in the jobs' order."""
    barrier = threading.Barrier(len(jobs))
    statuses: list[int] = [0] * len(jobs)

    def run(n: int, kind: str, what) -> None:
        client = AgentClient(key)
        barrier.wait()
        try:
            if kind == "events":
                statuses[n] = client.post(URL, {"events": what}).status_code
            else:
                event_id, body = what
                statuses[n] = client.post(f"/api/v1/events/{event_id}/retract", body).status_code
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n, *job)) for n, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def in_one_hour(minute: int = 0) -> datetime:
    """A time in the hour that began two hours ago, ``minute`` minutes into it (0–59)."""
    return (datetime.now(UTC) - timedelta(hours=2)).replace(minute=minute, second=0, microsecond=0)


def store(tenant, agent, *events: dict):
    batch = validation.validate_event_batch(
        {"events": list(events)}, validation.active_meter_codes(), timezone.now()
    )
    return ingest.store_events(tenant, agent, batch)


def buckets(events: list[dict]) -> dict[tuple, tuple[Decimal, int]]:
    """(session, meter, model, hour) → (quantity, events), as the per-session rollup should hold them (UTC
    tenant: the hour is the UTC hour)."""
    found: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for e in events:
        hour = validation.parse_timestamp(e["timestamp"]).replace(minute=0, second=0, microsecond=0)
        for meter, q in e["usage"].items():
            cell = found[(e["session_id"], meter, e["model"], hour)]
            cell[0] += Decimal(str(q))
            cell[1] += 1
    return {k: (q.normalize(), n) for k, (q, n) in found.items()}


def stored_buckets(tenant) -> dict[tuple, tuple[Decimal, int]]:
    rows = UsageRollup.objects.for_tenant(tenant).values_list(
        "session_id", "meter", "model", "hour", "quantity", "event_count"
    )
    return {(s, m, mo, h): (q.normalize(), n) for s, m, mo, h, q, n in rows}


def agent_buckets(events: list[dict]) -> dict[tuple, tuple[Decimal, int]]:
    found: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for (_, meter, model, hour), (q, n) in buckets(events).items():
        found[(meter, model, hour)][0] += q
        found[(meter, model, hour)][1] += n
    return {k: (q.normalize(), n) for k, (q, n) in found.items()}


def stored_agent_buckets(tenant) -> dict[tuple, tuple[Decimal, int]]:
    rows = AgentRollup.objects.for_tenant(tenant).values_list(
        "meter", "model", "hour", "quantity", "event_count"
    )
    return {(m, mo, h): (q.normalize(), n) for m, mo, h, q, n in rows}


def assert_counts_exactly(tenant, effective: list[dict]) -> None:
    assert stored_buckets(tenant) == buckets(effective)
    assert stored_agent_buckets(tenant) == agent_buckets(effective)
    assert rollup_drift(tenant.pk) == []
    times: dict[str, list[datetime]] = defaultdict(list)
    for e in effective:
        times[e["session_id"]].append(validation.parse_timestamp(e["timestamp"]))
    for session in Session.objects.for_tenant(tenant):
        got = (session.first_usage_at, session.last_usage_at)
        spent = times.get(session.session_id)
        assert got == ((min(spent), max(spent)) if spent else (None, None)), session.session_id


# --- order does not matter -----------------------------------------------------------------------------------


def drawn_event(draw, name: str, session: str, now: datetime) -> dict:
    meter = draw(st.sampled_from(["tts_characters", "stt_audio_seconds"]))
    if meter == "tts_characters":
        quantity = draw(st.integers(0, 5000))
    else:
        quantity = draw(st.decimals(0, 999, places=2, allow_nan=False, allow_infinity=False))
    at = now - timedelta(minutes=draw(st.integers(1, 600)))
    return record(name, at, session, draw(st.sampled_from(["m0", "m1"])), {meter: str(quantity)})


@st.composite
def histories(draw):
    """Originals, each with a chain of corrections (each link replaces the one before; the last may be a plain
    retraction), some operations sent twice, all in a random order. Every event is corrected at most once, so
    which events count does not depend on the order."""
    now = datetime.now(UTC).replace(microsecond=0)
    events, operations, effective = {}, [], []
    for n in range(draw(st.integers(1, 6))):
        current = drawn_event(draw, f"e{n}", f"s{n % 3}", now)
        events[current["id"]] = current
        operations.append(("send", current))
        for link in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                operations.append(("retract", current["id"]))
                current = None
                break
            fixed = {
                **drawn_event(draw, f"e{n}-fix{link}", current["session_id"], now),
                "replaces": current["id"],
            }
            events[fixed["id"]] = fixed
            operations.append(("send", fixed))
            current = fixed
        if current is not None:
            effective.append(current)
    resends = draw(st.lists(st.sampled_from(operations), max_size=4))
    order = draw(st.permutations(operations + resends))
    return order, effective, events


def apply_until_done(tenant, agent, operations) -> None:
    """Like a client's spool: an operation whose event is not there yet (404) is tried again next round."""
    pending = list(operations)
    for _ in range(len(pending) + 1):
        later = []
        for kind, what in pending:
            try:
                if kind == "send":
                    store(tenant, agent, what)
                else:
                    corrections.retract(tenant, what, agent=agent)
            except corrections.CorrectionRefused as refused:
                assert refused.status == 404, refused.detail
                later.append((kind, what))
        pending = later
        if not pending:
            return
    raise AssertionError(f"never applied: {pending}")


@pytest.mark.django_db
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(history=histories())
def test_rollups_are_those_of_the_events_that_count_whatever_the_order(history):
    order, effective, events = history
    tenant = TenantFactory()
    agent = AgentFactory(tenant=tenant)
    apply_until_done(tenant, agent, order)
    assert_counts_exactly(tenant, effective)
    assert UsageEvent.objects.for_tenant(tenant).count() == len(events)  # nothing stored twice, nothing lost
    counting = set(
        UsageEvent.objects.for_tenant(tenant)
        .filter(retracted_at__isnull=True)
        .values_list("event_id", flat=True)
    )
    assert counting == {e["id"] for e in effective}


# --- concurrency ----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_different_corrections_of_one_event_exactly_one_wins():
    tenant = TenantFactory()
    agent = AgentFactory(tenant=tenant)
    key = api_key_for(agent)
    at = datetime.now(UTC) - timedelta(minutes=30)
    original = record("orig", at, "call-1", "m0", {"tts_characters": "1000"})
    other = record("other", at + timedelta(seconds=1), "call-1", "m0", {"tts_characters": "7"})
    assert AgentClient(key).post(URL, {"events": [original, other]}).status_code == 200

    jobs: list[tuple[str, object]] = [
        (
            "events",
            [
                record(
                    f"fix-{i}",
                    at + timedelta(minutes=i),
                    "call-1",
                    f"m{i % 2}",
                    {"tts_characters": str(100 * i)},
                    "orig",
                )
            ],
        )
        for i in range(1, 9)
    ] + [("retract", ("orig", {"reason": f"reason {i}"})) for i in range(4)]
    answers = [(kind, what, status) for (kind, what), status in zip(jobs, at_once(key, jobs), strict=True)]

    winners = [a for a in answers if a[2] == 200]
    assert len(winners) == 1 and sorted(a[2] for a in answers) == [200] + [409] * (len(answers) - 1)
    kind, what, _ = winners[0]
    stored = UsageEvent.objects.get(event_id="orig")
    effective = [other, *what] if kind == "events" else [other]
    if kind == "events":
        assert stored.retracted_by_event_id == what[0]["id"]
    else:
        assert stored.retraction_reason == what[1]["reason"] and stored.retracted_by == "agent"
    assert UsageEvent.objects.count() == 2 + (kind == "events")  # no losing replacement was stored
    assert_counts_exactly(tenant, effective)
    assert Event.objects.filter(tenant_id=tenant.pk, type=corrections.USAGE_CORRECTED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_corrections_and_ordinary_batches_of_one_agent_at_once_stay_exact():
    """Corrections move the same hourly buckets ordinary batches do, from several connections at once: no
    deadlock is left unresolved, nothing is lost or counted twice."""
    tenant = TenantFactory()
    agent = AgentFactory(tenant=tenant)
    key = api_key_for(agent)
    base = datetime.now(UTC) - timedelta(hours=2)
    originals = [
        record(
            f"o{i}",
            base + timedelta(minutes=7 * i),
            f"s{i % 3}",
            f"m{i % 2}",
            {"tts_characters": str(10 + i)},
        )
        for i in range(12)
    ]
    assert AgentClient(key).post(URL, {"events": originals}).status_code == 200
    rng = random.Random(7)
    fixes = {
        o["id"]: {
            **o,
            "id": f"{o['id']}b",
            "replaces": o["id"],
            "usage": {"tts_characters": str(rng.randint(0, 50))},
            "timestamp": iso(base + timedelta(minutes=rng.randint(0, 110))),
        }
        for o in originals[:8]
    }
    retracted = {o["id"] for o in originals[8:10]}
    new = [
        record(
            f"n{i}",
            base + timedelta(minutes=rng.randint(0, 110)),
            f"s{i % 3}",
            f"m{i % 2}",
            {"tts_characters": "1"},
        )
        for i in range(40)
    ]
    jobs: list[tuple[str, object]] = [("events", [fix]) for fix in fixes.values()]
    jobs += [("retract", (event_id, {})) for event_id in retracted]
    jobs += [("events", new[i : i + 5]) for i in range(0, 40, 5)]
    rng.shuffle(jobs)
    assert at_once(key, jobs) == [200] * len(jobs)
    effective = [*fixes.values(), *(o for o in originals[10:]), *new]
    assert_counts_exactly(tenant, effective)


# --- the drift check ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_verify_rollups_finds_no_drift_after_corrections_and_finds_it_when_rollups_are_tampered(
    tenant, agent
):
    at = in_one_hour(5)
    sent = [
        record(f"e{i}", at + timedelta(minutes=i), "s", "m0", {"tts_characters": str(i + 1)})
        for i in range(5)
    ]
    store(tenant, agent, *sent)
    corrections.retract(tenant, "e0", agent=agent, reason="test")
    fix = record("e1b", at, "s", "m1", {"tts_characters": "40"}, replaces="e1")
    store(tenant, agent, fix)
    assert tasks.verify_rollups(tenant.pk) == []
    assert totals(tenant) == {
        ("tts_characters", PROVIDER, "m0"): Decimal(3 + 4 + 5),
        ("tts_characters", PROVIDER, "m1"): Decimal(40),
    }

    # an event marked retracted behind the rollups' back (the trigger allows the mark; only code moves rollups)
    UsageEvent.objects.filter(event_id="e2").update(retracted_at=timezone.now(), retraction_reason="raw")
    drift = tasks.verify_rollups(tenant.pk)
    assert {(d["rollup"], d["events_quantity"], d["rollup_quantity"]) for d in drift} == {
        ("usage_usagerollup", "9", "12.000000"),
        ("usage_agentrollup", "9", "12.000000"),
    }


@pytest.mark.django_db
def test_verify_rollups_finds_a_tampered_bucket_after_corrections(tenant, agent):
    at = in_one_hour(5)
    store(
        tenant,
        agent,
        record("a", at, "s", "m0", {"tts_characters": "5"}),
        record("b", at, "s", "m0", {"tts_characters": "6"}),
    )
    corrections.retract(tenant, "a", agent=agent)
    assert tasks.verify_rollups(tenant.pk) == []
    AgentRollup.objects.filter(tenant=tenant).update(event_count=2)
    assert [(d["rollup"], d["events_count"], d["rollup_count"]) for d in tasks.verify_rollups(tenant.pk)] == [
        ("usage_agentrollup", 1, 2)
    ]


@pytest.mark.django_db
def test_a_correction_that_finds_its_bucket_missing_or_short_changes_nothing(tenant, agent):
    at = in_one_hour(5)
    store(tenant, agent, record("a", at, "s", "m0", {"tts_characters": "5"}))
    UsageRollup.objects.filter(tenant=tenant).delete()  # rollups that lost the event (drift)
    with pytest.raises(corrections.RollupsDisagree):
        corrections.retract(tenant, "a", agent=agent)
    store(tenant, agent, record("x", at, "s2", "m9", {"tts_characters": "5"}))
    AgentRollup.objects.filter(tenant=tenant, model="m9").update(quantity=2)  # holds less than the event
    with pytest.raises(IntegrityError):
        store(tenant, agent, record("x2", at, "s2", "m9", {"tts_characters": "1"}, replaces="x"))
    assert not UsageEvent.objects.filter(retracted_at__isnull=False).exists()
    assert not UsageEvent.objects.filter(event_id="x2").exists()
    assert not Event.objects.filter(type=corrections.USAGE_CORRECTED).exists()


# --- what the database refuses, and the outbox ----------------------------------------------------------------


@pytest.mark.django_db
def test_an_event_is_append_only_but_for_one_retraction(tenant, agent):
    at = datetime.now(UTC) - timedelta(minutes=40)
    store(tenant, agent, record("a", at, "s", "m0", {"tts_characters": "5"}))
    event = UsageEvent.objects.get(event_id="a")
    for change in (
        {"usage": {"tts_characters": "6"}},
        {"model": "m1"},
        {"replaces": "z"},
        {"session_id": "t"},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            UsageEvent.objects.filter(pk=event.pk).update(**change)
    with pytest.raises(IntegrityError), transaction.atomic():  # staff give a reason
        UsageEvent.objects.filter(pk=event.pk).update(retracted_at=timezone.now(), retracted_by_user=_staff())
    with pytest.raises(IntegrityError), transaction.atomic():  # the mark comes with a retraction
        UsageEvent.objects.filter(pk=event.pk).update(retraction_reason="why")
    corrections.retract(tenant, "a", agent=agent, reason="once")
    for change in ({"retracted_at": None}, {"retraction_reason": "changed"}, {"retracted_by_event_id": "x"}):
        with pytest.raises(IntegrityError), transaction.atomic():  # a retraction is final
            UsageEvent.objects.filter(pk=event.pk).update(**change)
    with pytest.raises(IntegrityError), transaction.atomic():
        store(tenant, agent, record("self", at, "s", "m0", {"tts_characters": "1"}))
        UsageEvent.objects.filter(event_id="self").update(replaces="self")


def _staff():
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("staff-member", is_staff=True)


@pytest.mark.django_db
def test_usage_corrected_commits_with_the_correction_and_a_rolled_back_one_leaves_nothing(tenant, agent):
    at = datetime.now(UTC) - timedelta(minutes=40)
    store(
        tenant,
        agent,
        record("a", at, "s", "m0", {"tts_characters": "5"}),
        record("b", at, "s", "m0", {"tts_characters": "2"}),
    )

    def failing_hook(tenant, agent, change: UsageChange):
        raise RuntimeError("a hook above usage failed")

    fix = record("a-fix", at, "s", "m0", {"tts_characters": "4"}, replaces="a")
    batch = validation.validate_event_batch(
        {"events": [fix]}, validation.active_meter_codes(), timezone.now()
    )
    with pytest.raises(RuntimeError):
        ingest.store_events(tenant, agent, batch, on_stored=failing_hook)
    assert not UsageEvent.objects.filter(event_id="a-fix").exists()
    assert not UsageEvent.objects.get(event_id="a").is_retracted
    assert not Event.objects.filter(type=corrections.USAGE_CORRECTED).exists()
    assert totals(tenant) == {("tts_characters", PROVIDER, "m0"): Decimal(7)}

    heard: list[UsageChange] = []
    ingest.store_events(tenant, agent, batch, on_stored=lambda t, a, change: heard.append(change))
    assert [r.event_id for r in heard[0].stored] == ["a-fix"] and [
        r.event_id for r in heard[0].retracted
    ] == ["a"]
    corrections.retract(tenant, "b", agent=agent, reason="test call")
    events = Event.objects.filter(tenant_id=tenant.pk, type=corrections.USAGE_CORRECTED).order_by("pk")
    assert [e.data["events"] for e in events] == [
        [{"event_id": "a", "retracted_by": "replacement", "replaced_by": "a-fix", "reason": ""}],
        [{"event_id": "b", "retracted_by": "agent", "replaced_by": None, "reason": "test call"}],
    ]
    assert all(e.data["agent_id"] == agent.pk and e.data["corrections"] == 1 for e in events)
    assert (
        datetime.fromisoformat(events[1].data["retracted_at"])
        == UsageEvent.objects.get(event_id="b").retracted_at
    )
