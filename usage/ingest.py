"""The write path: store a validated batch exactly once and roll it up — in one transaction (DESIGN §4).

Accepted events claim their ids in ``usage_eventid`` (``ON CONFLICT DO NOTHING``, in event-id order), only the
claimed ones are inserted into the partitioned events, and they are rolled up in the same SQL statement from the
rows that insert actually returned (usage.rollups.ROLLUP_CTES: per session in ``usage_usagerollup``, per agent in
``usage_agentrollup``), so a concurrent resend of the same event can never be counted twice: the second
transaction waits on the claim's primary key, claims nothing, and so stores and rolls up nothing.
The same statement creates missing sessions and widens each session's first and last usage to the rows it
inserted (only when they move it, so most batches of a running session rewrite one row's ``last_usage_at``).
The ids the claim skipped are then compared with the stored events: duplicates or conflicts (decision 023 says
how an id whose month was archived is answered). Batches are validated before they get here (usage.validation,
usage.livekit), so an invalid batch stores nothing.

A batch whose events correct stored ones (``replaces``, usage.corrections) first locks and checks the events
they name, then runs the statement's correcting variant: the same insert, and in the same statement the
originals of the replacements it inserted marked retracted and the rollups moved by the difference (each bucket
once, in key order). A resend of a replacement is a duplicate and retracts nothing again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.db import connection, transaction
from django.utils import timezone

from notifications import outbox
from tenants.models import Agent, Tenant
from usage import changes, corrections
from usage.models import Session
from usage.rollups import ROLLUP_CHANGE_RESULTS, ROLLUP_CTES, rollup_change_ctes
from usage.validation import Batch, EventRecord

USAGE_CONFLICT_DETECTED = "usage.conflict_detected"
CONFLICT_IDS_IN_EVENT = 100  # the event carries the count and at most this many ids


class SessionModeConflict(Exception):
    """The session was already reported the other way (per-request metrics vs per-model usage)."""


class SessionOfAnotherAgent(Exception):
    """The batch writes into sessions another agent of the tenant created (DESIGN §11: an agent key writes
    only its own agent's events and sessions). Nothing was stored."""

    def __init__(self, session_ids: set[str]):
        super().__init__(", ".join(sorted(session_ids)))
        self.session_ids = session_ids


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    # The events of the request that replaced a stored one (``[{index, id, replaces}]``); None when it carried
    # no ``replaces`` (the body then leaves it out).
    replacements: list[dict[str, Any]] | None = None
    # What a usage hook adds to the response body (for example billing's ``unpriced`` report).
    extra: dict[str, Any] = field(default_factory=dict)
    inserted_ids: set[str] = field(default_factory=set, repr=False)
    retracted_ids: set[str] = field(default_factory=set, repr=False)
    emptied_rollups: list[tuple[str, int]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": len(self.conflicts),
            "conflicting_events": self.conflicts,
        }
        if self.ignored:
            body["ignored"] = self.ignored
        if self.replacements is not None:
            body["replacements"] = self.replacements
        body.update(self.extra)
        return body


# ``sessions`` creates the batch's missing sessions, keeps each session's first and last usage from the events
# this statement inserted (a resend moves nothing), and returns those another agent owns (the caller then
# rolls back). Its DO UPDATE also where another agent owns the row is there because ON
# CONFLICT DO UPDATE, unlike DO NOTHING, checks the latest committed row even when it was inserted after
# this statement's snapshot, so a session another agent creates concurrently is still caught. It locks the
# batch's existing session rows until commit; concurrent batches of one session already wait on each
# other's per-agent rollup rows (docs/architecture.md), so this adds no new wait in practice.
def _insert_sql(correcting: bool) -> str:
    """The statement; ``correcting`` (a batch with ``replaces``): the variant that also retracts the originals of
    the replacements it inserted and moves the rollups by the difference, returning (kind, value) rows."""
    replaces = (", replaces", ", e->>7 AS replaces") if correcting else ("", "")
    head = f"""
WITH incoming AS (
    SELECT e->>0 AS event_id, (e->>1)::timestamptz AS ts, e->>2 AS session_id, e->>3 AS provider, e->>4 AS model,
           e->5 AS usage, e->6 AS metadata{replaces[1]}
    FROM jsonb_array_elements(%(rows)s::jsonb) AS e
),
claimed AS (
    INSERT INTO usage_eventid (tenant_id, event_id, timestamp)
    SELECT %(tenant)s, event_id, ts FROM incoming ORDER BY event_id
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING event_id
),
inserted AS (
    INSERT INTO usage_usageevent (tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage,
                                  metadata, source, received_at{replaces[0]})
    SELECT %(tenant)s, %(agent)s, event_id, ts, session_id, provider, model, usage, metadata, %(source)s, now(){replaces[0]}
    FROM incoming JOIN claimed USING (event_id) ORDER BY event_id
    RETURNING event_id, timestamp, session_id, provider, model, usage{replaces[0]}
),
sessions AS (
    INSERT INTO usage_session (tenant_id, agent_id, session_id, end_user_id, conversation_type, metadata,
                               default_models, livekit_report_mode, first_usage_at, last_usage_at, created_at,
                               updated_at)
    SELECT %(tenant)s, %(agent)s, named.session_id, '', '', '{{}}'::jsonb, '{{}}'::jsonb, %(mode)s, used.first_at,
           used.last_at, now(), now()
    FROM (SELECT DISTINCT session_id FROM incoming WHERE session_id <> '') AS named
    LEFT JOIN (
        SELECT session_id, min(timestamp) AS first_at, max(timestamp) AS last_at FROM inserted GROUP BY session_id
    ) AS used USING (session_id)
    ORDER BY named.session_id
    ON CONFLICT (tenant_id, session_id) DO UPDATE
       SET first_usage_at = least(usage_session.first_usage_at, EXCLUDED.first_usage_at),
           last_usage_at = greatest(usage_session.last_usage_at, EXCLUDED.last_usage_at)
       WHERE usage_session.agent_id <> %(agent)s
          OR EXCLUDED.first_usage_at < usage_session.first_usage_at
          OR EXCLUDED.last_usage_at > usage_session.last_usage_at
          OR (usage_session.first_usage_at IS NULL AND EXCLUDED.first_usage_at IS NOT NULL)
    RETURNING session_id, agent_id
),"""  # noqa: S608 - constant SQL fragments only
    if not correcting:
        return f"""{head}
{ROLLUP_CTES}
SELECT event_id, '' FROM inserted
UNION ALL SELECT '', session_id FROM sessions WHERE agent_id <> %(agent)s
"""  # noqa: S608 - constant SQL fragments only
    # The originals were locked and checked (usage.corrections.lock_originals), and none is an event of this
    # batch; a replacement the insert skipped (a duplicate) retracts nothing.
    return f"""{head}
retracted AS (
    UPDATE usage_usageevent o SET retracted_at = now(), retracted_by_event_id = i.event_id
    FROM inserted i
    WHERE o.tenant_id = %(tenant)s AND o.timestamp = ANY(%(replaced_at)s::timestamptz[]) AND o.event_id = i.replaces
      AND o.retracted_at IS NULL
    RETURNING o.event_id, o.timestamp, o.session_id, o.provider, o.model, o.usage
),
changes AS (
    SELECT timestamp, session_id, provider, model, usage, 1 AS sign FROM inserted
    UNION ALL SELECT timestamp, session_id, provider, model, usage, -1 FROM retracted
),
{rollup_change_ctes("changes")}
SELECT 'inserted', event_id FROM inserted
UNION ALL SELECT 'session', session_id FROM sessions WHERE agent_id <> %(agent)s
UNION ALL SELECT 'retracted', event_id FROM retracted
UNION ALL {ROLLUP_CHANGE_RESULTS}
"""  # noqa: S608 - constant SQL fragments only


_INSERT_SQL = _insert_sql(correcting=False)
_CORRECTING_SQL = _insert_sql(correcting=True)


# The kinds of usage a session's ``default_models`` can name, and which meters belong to each.
DEFAULT_MODEL_KINDS = {"llm": ("llm_", "realtime_"), "stt": ("stt_",), "tts": ("tts_",)}


def _kind(record: EventRecord) -> str:
    for kind, prefixes in DEFAULT_MODEL_KINDS.items():
        if record.usage and all(meter.startswith(prefixes) for meter in record.usage):
            return kind
    return ""


def with_default_models(tenant: Tenant, records: list[EventRecord]) -> list[EventRecord]:
    """Records that name no provider and no model get their session's default for their kind of usage
    (``PUT /api/v1/sessions/{id}`` with ``default_models``), so usage from LiveKit releases that send no model
    metadata can be priced. A record whose meters span kinds, or a session without a default, is kept as sent.
    The filled record is what is stored and compared on a resend."""
    bare = {r.session_id for r in records if not r.provider and not r.model and r.session_id}
    if not bare:
        return records
    defaults = dict(
        Session.objects.filter(tenant=tenant, session_id__in=bare)
        .exclude(default_models={})
        .values_list("session_id", "default_models")
    )
    if not defaults:
        return records
    filled = []
    for record in records:
        chosen = defaults.get(record.session_id, {}).get(_kind(record)) if record.session_id in bare else None
        if chosen and not record.provider and not record.model:
            record = dataclasses.replace(record, provider=chosen["provider"], model=chosen["model"])
        filled.append(record)
    return filled


def store_events(
    tenant: Tenant,
    agent: Agent,
    batch: Batch,
    *,
    session_mode: str = "",
    attempts: int = 3,
    on_stored: changes.UsageHook | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Store validated records exactly once and roll them up; returns what happened to each.

    A ``session_mode`` ("metrics" or "usage") enforces DESIGN §4's rule that a LiveKit session is reported
    either per request or per model, never both (raises SessionModeConflict, nothing stored). A session
    another agent created is never written (raises SessionOfAnotherAgent, nothing stored). Records that replace
    stored events retract them in the same transaction, or nothing is stored (raises
    usage.corrections.CorrectionRefused); ``now`` is the clock their 35-day window is checked against. The usage
    hooks, then ``on_stored``, hear of what changed (usage.changes).
    """

    def work() -> IngestResult:
        with transaction.atomic():
            if session_mode:
                _claim_session_mode(tenant, agent, batch.session_id, session_mode)
            records = with_default_models(tenant, batch.records)
            originals = corrections.lock_originals(tenant, agent, records, now or timezone.now())
            replaced_at = sorted({event.timestamp for event in originals.values()})
            result = _store(tenant, agent, records, session_mode, replaced_at=replaced_at)
            stored = sorted(
                (r for r in records if r.event_id in result.inserted_ids), key=lambda r: r.event_id
            )
            retracted = sorted(
                (originals[r.replaces] for r in stored if r.replaces), key=lambda event: event.event_id
            )
            if originals:
                result.replacements = [
                    {"index": r.index, "id": r.event_id, "replaces": r.replaces}
                    for r in sorted(stored, key=lambda r: r.index)
                    if r.replaces
                ]
            if retracted:
                corrections.after_retraction(tenant, agent.pk, retracted, result.emptied_rollups)
            change = changes.UsageChange(stored, [corrections.as_record(event) for event in retracted])
            result.extra.update(changes.run_hooks(tenant, agent, change, on_stored))
        result.duplicates += batch.repeats
        result.ignored = batch.ignored
        return result

    return changes.retrying(work, attempts)


def _claim_session_mode(tenant: Tenant, agent: Agent, session_id: str, mode: str) -> None:
    session, _ = Session.objects.get_or_create(
        tenant=tenant, session_id=session_id, defaults={"agent": agent, "livekit_report_mode": mode}
    )
    session = Session.objects.select_for_update().get(tenant=tenant, pk=session.pk)
    if session.agent_id != agent.pk:
        raise SessionOfAnotherAgent({session_id})
    if session.livekit_report_mode and session.livekit_report_mode != mode:
        raise SessionModeConflict(session.livekit_report_mode)
    if not session.livekit_report_mode:
        Session.objects.filter(tenant=tenant, pk=session.pk).update(livekit_report_mode=mode)


# The ids an insert skipped are already stored: each is a duplicate if the stored event is the same one —
# same agent and endpoint, same timestamp (except for LiveKit usage reports, see EventRecord.identity),
# session, provider, model, usage and metadata (jsonb equality: key order and spacing do not matter, and
# quantities were stored canonical) — and a conflict otherwise. Only skipped ids pay for this comparison.
_DUPLICATES_SQL = """
SELECT s.event_id
FROM jsonb_array_elements(%(rows)s::jsonb) AS e
JOIN usage_eventid d ON d.tenant_id = %(tenant)s AND d.event_id = e->>0
JOIN usage_usageevent s ON s.tenant_id = %(tenant)s AND s.timestamp = d.timestamp AND s.event_id = d.event_id
WHERE s.agent_id = %(agent)s AND s.source = %(source)s
  AND (s.timestamp = (e->>1)::timestamptz OR s.source = 'livekit_usage')
  AND s.session_id = e->>2 AND s.provider = e->>3 AND s.model = e->>4
  AND s.usage = e->5 AND s.metadata = e->6 AND s.replaces = e->>7
"""


def _rows_json(records: Sequence[EventRecord]) -> str:
    # One JSON document of rows rather than eight arrays: quoting 1000-element arrays of JSON text in the
    # driver cost more than the INSERT itself (docs/performance.md); PostgreSQL parses this in C. orjson
    # writes it (aware datetimes as RFC 3339) in a tenth of the standard library's time.
    return orjson.dumps(
        [
            [r.event_id, r.timestamp, r.session_id, r.provider, r.model, r.usage, r.metadata, r.replaces]
            for r in records
        ]
    ).decode()


def _store(
    tenant: Tenant,
    agent: Agent,
    records: Sequence[EventRecord],
    session_mode: str,
    *,
    replaced_at: list[datetime] | None = None,
) -> IngestResult:
    """``replaced_at``: the timestamps of the events the batch's replacements name (the statement's correcting
    variant then runs, reading only their partitions); None or empty for a batch that corrects nothing."""
    if not records:
        return IngestResult()
    correcting = bool(replaced_at)
    params = {
        "replaced_at": replaced_at or [],
        "tenant": tenant.pk,
        "agent": agent.pk,
        "tz": tenant.timezone,
        "mode": session_mode,
        "source": records[0].source,
        "rows": _rows_json(records),
    }
    emptied: list[tuple[str, int]] = []
    retracted: set[str] = set()
    with connection.cursor() as cursor:
        if correcting:
            cursor.execute(_CORRECTING_SQL, params)
            values, emptied = corrections.read_statement_rows(cursor.fetchall())
            inserted, others = values.get("inserted", set()), values.get("session", set())
            retracted = values.get("retracted", set())
        else:
            cursor.execute(_INSERT_SQL, params)
            rows = cursor.fetchall()
            inserted = {event_id for event_id, _ in rows if event_id}
            others = {session_id for _, session_id in rows if session_id}
        if others:
            raise SessionOfAnotherAgent(others)  # the transaction rolls back: nothing is stored
        if retracted != {r.replaces for r in records if r.replaces and r.event_id in inserted}:
            # the originals are locked, so this cannot be; never report a correction that did not happen
            raise AssertionError("a replacement and the retraction of its original must commit together")
        result = IngestResult(accepted=len(inserted))
        result.inserted_ids, result.retracted_ids, result.emptied_rollups = inserted, retracted, emptied
        leftovers = [r for r in records if r.event_id not in inserted]
        if leftovers:
            cursor.execute(_DUPLICATES_SQL, {**params, "rows": _rows_json(leftovers)})
            same = {row[0] for row in cursor.fetchall()}
            unmatched = [r.event_id for r in leftovers if r.event_id not in same]
            same |= _archived_repeats(cursor, tenant, records[0].source, unmatched)
            for record in leftovers:
                if record.event_id in same:
                    result.duplicates += 1
                else:
                    result.conflicts.append({"index": record.index, "id": record.event_id})
    if result.conflicts:  # rare, so the common batch pays nothing for it
        _record_conflicts(tenant, agent, result.conflicts)
    return result


# The ids of those whose month was archived (usage.archive): claimed, but no longer in the events table.
_ARCHIVED_SQL = """
SELECT d.event_id FROM usage_eventid d
WHERE d.tenant_id = %(tenant)s AND d.event_id = ANY(%(ids)s::text[]) AND NOT EXISTS (
    SELECT FROM usage_usageevent s
    WHERE s.tenant_id = d.tenant_id AND s.timestamp = d.timestamp AND s.event_id = d.event_id)
"""


def _archived_repeats(cursor, tenant: Tenant, source: str, unmatched: list[str]) -> set[str]:
    """Of ids that matched no stored event, those to count as duplicates because their event was archived: a
    LiveKit usage report's, whose id is derived from its session and model and whose timestamp is its receipt time,
    so the same id is the same report resent. Any other archived event is more than 35 days older than anything
    accepted now, so a resend under its id differs from it at least in its timestamp: a conflict, never stored."""
    if not unmatched or source != "livekit_usage":
        return set()
    cursor.execute(_ARCHIVED_SQL, {"tenant": tenant.pk, "ids": unmatched})
    return {row[0] for row in cursor.fetchall()}


def _record_conflicts(tenant: Tenant, agent: Agent, conflicts: list[dict[str, Any]]) -> None:
    """One ``usage.conflict_detected`` per batch, in the ingest transaction (the tenant's webhook hears of
    resends whose payload differs from what was stored; what was stored is kept)."""
    outbox.record(
        tenant.pk,
        USAGE_CONFLICT_DETECTED,
        {
            "agent_id": agent.pk,
            "conflicts": len(conflicts),
            "event_ids": [c["id"] for c in conflicts[:CONFLICT_IDS_IN_EVENT]],
        },
    )
