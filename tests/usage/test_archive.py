"""Monthly partitions, retention and the archive (usage.partitions, usage.archive; decision 023).

The months used here (2026-03, 2031-…) lie outside the partitions the migration made for today, whatever layout
the test database has (with or without the legacy partition of usage.0012)."""

import dataclasses
import gzip
from datetime import UTC, date, datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection

from tests.billing.builders import at, billed, finalize, line_tuples, store
from tests.factories import AgentFactory
from tests.usage.builders import event, recent, totals
from usage import archive, ingest, partitions
from usage.models import EventArchive, EventId, UsageEvent
from usage.rollups import rollup_drift
from usage.validation import Batch, EventRecord

pytestmark = pytest.mark.django_db
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 4, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _archive_dir(settings, tmp_path):
    settings.EVENT_ARCHIVE_DIR = str(tmp_path / "archive")
    settings.EVENT_RETENTION_MONTHS = 13


def _events(tenant) -> list[dict]:
    return list(UsageEvent.objects.for_tenant(tenant).order_by("id").values())


def _partition_of(tenant, event_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM usage_usageevent WHERE tenant_id = %s AND event_id = %s",
            [tenant.pk, event_id],
        )
        return cursor.fetchone()[0]


def test_an_archived_month_leaves_rollups_and_invoices_as_they_were_and_restores_identical(make_agent_client):
    agent = billed()  # usage in March 2026, a finalized invoice for it
    tenant = agent.tenant
    partitions.create_month(MARCH)
    store(agent, at(date(2026, 3, 31), 23), {"stt_audio_seconds": 30}, "late-in-march", provider="Deepgram")
    invoice = finalize(agent)
    lines, usage, events = line_tuples(invoice), totals(tenant), _events(tenant)
    assert len(events) == 3

    assert archive.archive_month(MARCH, NOW) == ["2026-03"]

    record = EventArchive.objects.get(month=date(2026, 3, 1))
    assert (record.rows, record.archived_at is not None, record.restored_at) == (3, True, None)
    with gzip.open(record.path, "rt") as file:
        assert sum(1 for _ in file) == 4  # a header and one line per event
    assert _events(tenant) == []
    assert partitions.partition_name(MARCH) not in {p.name for p in partitions.partitions()}
    invoice.refresh_from_db()
    assert line_tuples(invoice) == lines
    assert totals(tenant) == usage
    assert EventId.objects.for_tenant(tenant).count() == 3  # the ids stay taken
    assert rollup_drift(tenant.pk) == []  # only months still held are checked

    # a resend under an archived id is recognised (not stored again), and the event can no longer be corrected
    client = make_agent_client(agent)
    answer = client.post("/api/v1/events", {"events": [event("llm", session_id="call-1")]})
    assert answer.status_code == 200, answer.content
    assert (answer.json()["accepted"], answer.json()["conflicts"]) == (0, 1)
    assert answer.json()["conflicting_events"] == [{"index": 0, "id": "llm"}]
    retract = client.post("/api/v1/events/llm/retract", {})
    assert retract.status_code == 422 and retract.json()["type"].endswith("event-not-correctable")
    replacing = client.post(
        "/api/v1/events", {"events": [event("llm-fixed", replaces="llm", session_id="call-1")]}
    )
    assert replacing.status_code == 422, replacing.content
    assert _events(tenant) == [] and totals(tenant) == usage

    call_command("restore_events", "2026-03")
    assert _events(tenant) == events
    assert _partition_of(tenant, "llm") == partitions.partition_name(MARCH)
    assert EventArchive.objects.get(month=date(2026, 3, 1)).restored_at is not None
    assert "2026-03" not in archive.archive_due(
        datetime(2027, 6, 1, tzinfo=UTC)
    )  # kept until archived by hand
    assert _events(tenant) == events


def test_a_file_that_does_not_read_back_as_archived_is_not_restored():
    agent = AgentFactory()
    partitions.create_month(MARCH)
    store(agent, at(date(2026, 3, 5)), {"llm_input_text_tokens": 10}, "one")
    archive.archive_month(MARCH, NOW)
    record = EventArchive.objects.get(month=date(2026, 3, 1))
    with gzip.open(record.path, "rt") as file:
        text = file.read()
    with gzip.open(record.path, "wt") as file:
        file.write(
            text.replace('"{""llm_input_text_tokens"": ""10""}"', '"{""llm_input_text_tokens"": ""11""}"')
        )

    with pytest.raises(archive.ArchiveMismatch):
        archive.restore_month(MARCH)
    assert partitions.partition_name(MARCH) not in {p.name for p in partitions.partitions()}
    assert UsageEvent.objects.for_tenant(agent.tenant).count() == 0


def test_an_event_for_a_month_without_a_partition_is_kept_and_moves_into_it_when_created():
    agent = AgentFactory()
    when = datetime(2031, 5, 10, 12, tzinfo=UTC)
    assert store(agent, when, {"llm_input_text_tokens": 7}, "early").accepted == 1
    assert _partition_of(agent.tenant, "early") == partitions.DEFAULT

    created = partitions.ensure_partitions(when, ahead=1)

    assert created == [partitions.partition_name(datetime(2031, m, 1, tzinfo=UTC)) for m in (4, 5, 6)]
    assert _partition_of(agent.tenant, "early") == "usage_usageevent_y2031m05"
    assert partitions.ensure_partitions(when, ahead=1) == []
    again = store(agent, when, {"llm_input_text_tokens": 7}, "early")
    assert (again.accepted, again.duplicates) == (0, 1)
    assert UsageEvent.objects.for_tenant(agent.tenant).count() == 1


def test_months_past_the_retention_are_archived_and_the_others_kept(settings):
    agent = AgentFactory()
    settings.EVENT_RETENTION_MONTHS = 2
    now = datetime(2031, 8, 15, tzinfo=UTC)
    partitions.ensure_partitions(now, ahead=0)
    for month in (5, 6):
        partitions.create_month(datetime(2031, month, 1, tzinfo=UTC))
        store(agent, datetime(2031, month, 20, tzinfo=UTC), {"llm_input_text_tokens": 1}, f"m{month}")

    assert archive.archive_due(now) == ["2031-05"]
    assert [e.event_id for e in UsageEvent.objects.for_tenant(agent.tenant)] == ["m6"]

    settings.EVENT_RETENTION_MONTHS = 1
    with pytest.raises(ImproperlyConfigured):
        archive.archive_due(now)


def test_a_livekit_usage_report_resent_after_its_month_was_archived_is_a_duplicate():
    agent = AgentFactory()
    partitions.create_month(MARCH)
    record = EventRecord(
        0,
        "lku:abc",
        datetime(2026, 3, 3, tzinfo=UTC),
        "s-1",
        "openai",
        "gpt-4o",
        {"llm_input_text_tokens": "5"},
        {},
        "livekit_usage",
    )
    assert ingest.store_events(agent.tenant, agent, Batch([record])).accepted == 1
    archive.archive_month(MARCH, NOW)

    resent = dataclasses.replace(record, timestamp=datetime.fromisoformat(recent().replace("Z", "+00:00")))
    result = ingest.store_events(agent.tenant, agent, Batch([resent]))

    assert (result.accepted, result.duplicates, result.conflicts) == (0, 1, [])
    assert UsageEvent.objects.for_tenant(agent.tenant).count() == 0
