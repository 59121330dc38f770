"""Exactly-once under concurrency: overlapping batches with duplicates, sent from several threads at once."""

import random
import threading
from decimal import Decimal

import pytest
from django.db import connection

from tests.conftest import AgentClient
from tests.factories import AgentFactory, api_key_for
from tests.usage.builders import event, recent, totals
from usage.models import Session, UsageEvent, UsageRollup
from usage.rollups import rollup_drift

URL = "/api/v1/events"


@pytest.mark.django_db(transaction=True)
def test_overlapping_batches_from_many_threads_end_with_exact_totals(tenant):
    agents = [AgentFactory(tenant=tenant) for _ in range(2)]
    keys = [api_key_for(a) for a in agents]
    when = recent()
    # 300 distinct events per agent, each in one of its 3 sessions and 2 models, with quantities 1..300
    universe = {
        key: [
            event(
                f"{n}-{i}",
                timestamp=when,
                session_id=f"s{n}-{i % 3}",
                model=f"m{i % 2}",
                usage={"tts_characters": i + 1, "stt_audio_seconds": f"{i}.25"},
            )
            for i in range(300)
        ]
        for n, key in enumerate(keys)
    }
    rng = random.Random(1)
    plans = []
    for thread in range(8):
        key = keys[thread % 2]
        events = universe[key]
        batches = [rng.sample(events, 60) + rng.sample(events, 5) for _ in range(6)]  # overlaps and repeats
        plans.append((key, batches))
    plans.append((keys[0], [universe[keys[0]][i : i + 100] for i in range(0, 300, 100)]))
    plans.append((keys[1], [universe[keys[1]][i : i + 100] for i in range(0, 300, 100)]))
    barrier = threading.Barrier(len(plans))
    statuses, failures = [], []

    def send(key, batches):
        client = AgentClient(key)
        barrier.wait()
        try:
            for batch in batches:
                response = client.post(URL, {"events": batch})
                statuses.append(response.status_code)
                if response.status_code != 200 or response.json()["conflicts"]:
                    failures.append(response.content)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=plan) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == [] and set(statuses) == {200}
    assert UsageEvent.objects.filter(tenant=tenant).count() == 600
    expected_chars = Decimal(sum(range(1, 301)))
    expected_seconds = Decimal(sum(range(300))) + Decimal("0.25") * 300
    got = totals(tenant)
    assert sum(q for (m, _, _), q in got.items() if m == "tts_characters") == 2 * expected_chars
    assert sum(q for (m, _, _), q in got.items() if m == "stt_audio_seconds") == 2 * expected_seconds
    assert (
        sum(
            UsageRollup.objects.filter(tenant=tenant, meter="tts_characters").values_list(
                "event_count", flat=True
            )
        )
        == 600
    )
    assert rollup_drift(tenant.pk) == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_conflicting_writes_keep_exactly_one_version(tenant, agent):
    key = api_key_for(agent)
    barrier = threading.Barrier(6)
    results = []

    def send(quantity):
        client = AgentClient(key)
        barrier.wait()
        contested = event("contested", timestamp=when, usage={"tts_characters": quantity})
        try:
            body = client.post(URL, {"events": [contested]}).json()
        finally:
            connection.close()
        results.append((quantity, body["accepted"], body["conflicts"]))

    when = recent()
    threads = [threading.Thread(target=send, args=(q,)) for q in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [q for q, accepted, _ in results if accepted == 1]
    assert len(winners) == 1 and sum(c for _, _, c in results) == 5
    assert UsageEvent.objects.get(event_id="contested").usage == {"tts_characters": str(winners[0])}
    assert sum(totals(tenant).values()) == winners[0]


@pytest.mark.django_db(transaction=True)
def test_agents_racing_for_one_new_session_leave_it_to_exactly_one_of_them(tenant):
    """The session check sees a session another agent created after this statement began (DESIGN §11)."""
    keys = [api_key_for(AgentFactory(tenant=tenant)) for _ in range(6)]
    barrier = threading.Barrier(len(keys))
    results = []

    def send(n, key):
        client = AgentClient(key)
        barrier.wait()
        batch = [
            event(f"{n}-{i}", timestamp=when, session_id="contested", usage={"tts_characters": 1})
            for i in range(50)
        ]
        try:
            results.append((key, client.post(URL, {"events": batch}).status_code))
        finally:
            connection.close()

    when = recent()
    threads = [threading.Thread(target=send, args=(n, key)) for n, key in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(status for _, status in results) == [200] + [409] * 5
    owner = Session.objects.get(tenant=tenant, session_id="contested").agent
    assert set(UsageEvent.objects.filter(tenant=tenant).values_list("agent", flat=True)) == {owner.pk}
    assert UsageEvent.objects.filter(tenant=tenant).count() == 50 == sum(totals(tenant).values())
