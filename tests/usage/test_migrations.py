"""Migrations that move data a running system has: usage.0004 fills the per-agent rollups from the per-session ones;
usage.0012 moves the events into partitions and their ids into usage_eventid while ingest goes on."""

import itertools
import threading
import time
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tests.usage.builders import event, recent, totals
from usage.ingest import store_events
from usage.models import EventId, UsageEvent
from usage.rollups import rollup_drift
from usage.validation import active_meter_codes, validate_event_batch

BEFORE = [("usage", "0003_portal_read_indexes")]


def _migrate(targets=None):
    """Migrate usage to ``targets``, or every app forward to its latest migration (going back in usage also
    unapplies what depends on it in other apps, such as billing's triggers on the rollups)."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_migration_backfills_per_agent_rollups_exactly(tenant, agent, agent_client):
    # Usage stored by the current code, then the per-agent table taken away as before 0004…
    for n, session in enumerate(["a", "a", "b", "c"]):
        body = {"events": [event(f"e{n}-{i}", session_id=session) for i in range(3)]}
        assert agent_client.post("/api/v1/events", body).status_code == 200
    before = totals(tenant)
    _migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('usage_agentrollup')")
            assert cursor.fetchone() == (None,)
    finally:
        # …and forward again: 0004 rebuilds it from usage_usagerollup.
        _migrate()

    assert totals(tenant) == before  # asserts both tables agree
    assert before[("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini")] == Decimal(12 * 1200)
    assert rollup_drift(tenant.pk) == []


# What ingest ran before usage.0012 (one event per statement here): it stops working when the table is swapped
# for the partitioned one, and the current code (usage.ingest) takes over, as when the new release starts.
OLD_INSERT = """
INSERT INTO usage_usageevent (tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage,
                              metadata, source, received_at)
VALUES (%s, %s, %s, now(), 'old', 'api.openai.com', 'gpt-4o-mini', '{"llm_input_text_tokens": "1"}', '{}', 'api',
        now())
ON CONFLICT (tenant_id, event_id) DO NOTHING
"""


@pytest.mark.django_db(transaction=True)
def test_events_move_into_partitions_while_ingest_goes_on(tenant, agent, agent_client):
    before, sent_at = {f"before-{n}-{i}" for n in range(4) for i in range(50)}, recent(60)
    for n in range(4):
        body = {
            "events": [event(f"before-{n}-{i}", session_id=f"s{n}", timestamp=sent_at) for i in range(50)]
        }
        assert agent_client.post("/api/v1/events", body).status_code == 200
    _migrate([("usage", "0011_event_corrections")])
    accepted, by_new_code, stop = [], [], threading.Event()

    def ingest_meanwhile():
        old_code = True
        try:
            for n in itertools.count():
                if stop.is_set():
                    return
                event_id = f"during-{n}"
                if old_code:
                    try:
                        with transaction.atomic(), connection.cursor() as cursor:
                            cursor.execute(OLD_INSERT, [tenant.pk, agent.pk, event_id])
                    except DatabaseError:
                        old_code = False  # not accepted: the client sends it again, to the new release
                    else:
                        accepted.append(event_id)
                        continue
                batch = validate_event_batch(
                    {"events": [event(event_id)]}, active_meter_codes(), timezone.now()
                )
                assert store_events(tenant, agent, batch).accepted == 1
                accepted.append(event_id)
                by_new_code.append(event_id)
        finally:
            connection.close()

    thread = threading.Thread(target=ingest_meanwhile)
    thread.start()
    try:
        _migrate()
        for _ in range(200):
            if len(by_new_code) >= 5 or not thread.is_alive():
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()

    print(
        f"accepted during the migration: {len(accepted) - len(by_new_code)} by the old code, then {len(by_new_code)}"
    )
    assert len(by_new_code) >= 5 and len(accepted) > len(by_new_code)  # both releases wrote during the move
    stored = list(UsageEvent.objects.for_tenant(tenant).values_list("event_id", flat=True))
    claimed = list(EventId.objects.for_tenant(tenant).values_list("event_id", flat=True))
    assert sorted(stored) == sorted(claimed) == sorted(before | set(accepted))  # nothing lost, nothing twice
    resent = [
        event("before-0-0", session_id="s0", timestamp=sent_at),
        event("before-0-1", session_id="other"),
    ]
    answer = agent_client.post("/api/v1/events", {"events": resent}).json()
    assert (answer["accepted"], answer["duplicates"], answer["conflicts"]) == (0, 1, 1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_usageevent_legacy")
        assert cursor.fetchone()[0] == len(stored)  # this month's events all stayed in the legacy partition
