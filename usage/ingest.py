"""The write path: store a validated batch exactly once and roll it up — in one transaction (DESIGN §4).

Accepted events are inserted with ``ON CONFLICT DO NOTHING`` in event-id order and rolled up in the same SQL
statement from the rows that insert actually returned (usage.rollups.ROLLUP_CTES: per session in
``usage_usagerollup``, per agent in ``usage_agentrollup``), so a concurrent resend of the same event can never
be counted twice: the second transaction waits on the unique index, inserts nothing, and so rolls up nothing.
The same statement creates missing sessions and widens each session's first and last usage to the rows it
inserted (only when they move it, so most batches of a running session rewrite one row's ``last_usage_at``).
The ids the insert skipped are then compared with the stored events: duplicates or conflicts. Batches are
validated before they get here (usage.validation, usage.livekit), so an invalid batch stores nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db import OperationalError, connection, transaction

from notifications import outbox
from tenants.models import Agent, Tenant
from usage.models import Session
from usage.rollups import ROLLUP_CTES
from usage.validation import Batch, EventRecord

_RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
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
    # What an ``on_stored`` hook adds to the response body (for example billing's ``unpriced`` report).
    extra: dict[str, Any] = field(default_factory=dict)
    inserted_ids: set[str] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": len(self.conflicts),
            "conflicting_events": self.conflicts,
        }
        if self.ignored:
            body["ignored"] = self.ignored
        body.update(self.extra)
        return body


# Called inside the ingest transaction with the records this batch actually inserted (duplicates and conflicts
# excluded), in event-id order (code-point order: the batch's receipt order for whatever depends on order, such
# as a tier position). A layer above usage (billing) passes one in to keep what it derives from new events exact
# and read-your-writes; what it returns is added to the response body. It raising rolls the whole batch back.
OnStored = Callable[[Tenant, Agent, Sequence[EventRecord]], dict[str, Any] | None]

# Hooks every store_events call runs (before its own ``on_stored``), registered once by the app that owns them
# (billing's per-call costs, from its AppConfig.ready), so no path that stores usage can skip them.
_STORED_HOOKS: list[OnStored] = []


def register_stored_hook(hook: OnStored) -> None:
    if hook not in _STORED_HOOKS:
        _STORED_HOOKS.append(hook)


# ``sessions`` creates the batch's missing sessions, keeps each session's first and last usage from the events
# this statement inserted (a resend moves nothing), and returns those another agent owns (the caller then
# rolls back). Its DO UPDATE also where another agent owns the row is there because ON
# CONFLICT DO UPDATE, unlike DO NOTHING, checks the latest committed row even when it was inserted after
# this statement's snapshot, so a session another agent creates concurrently is still caught. It locks the
# batch's existing session rows until commit; concurrent batches of one session already wait on each
# other's per-agent rollup rows (docs/architecture.md), so this adds no new wait in practice.
_INSERT_SQL = f"""
WITH incoming AS (
    SELECT e->>0 AS event_id, (e->>1)::timestamptz AS ts, e->>2 AS session_id, e->>3 AS provider, e->>4 AS model,
           e->5 AS usage, e->6 AS metadata
    FROM jsonb_array_elements(%(rows)s::jsonb) AS e
),
inserted AS (
    INSERT INTO usage_usageevent (tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage,
                                  metadata, source, received_at)
    SELECT %(tenant)s, %(agent)s, event_id, ts, session_id, provider, model, usage, metadata, %(source)s, now()
    FROM incoming ORDER BY event_id
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING event_id, timestamp, session_id, provider, model, usage
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
),
{ROLLUP_CTES}
SELECT event_id, '' FROM inserted
UNION ALL SELECT '', session_id FROM sessions WHERE agent_id <> %(agent)s
"""  # noqa: S608 - constant SQL fragments only


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
    on_stored: OnStored | None = None,
) -> IngestResult:
    """Store validated records exactly once and roll them up; returns what happened to each.

    A ``session_mode`` ("metrics" or "usage") enforces DESIGN §4's rule that a LiveKit session is reported
    either per request or per model, never both (raises SessionModeConflict, nothing stored). A session
    another agent created is never written (raises SessionOfAnotherAgent, nothing stored).
    """
    for attempt in range(attempts):
        try:
            with transaction.atomic():
                if session_mode:
                    _claim_session_mode(tenant, agent, batch.session_id, session_mode)
                records = with_default_models(tenant, batch.records)
                result = _store(tenant, agent, records, session_mode)
                hooks = [*_STORED_HOOKS, *([on_stored] if on_stored else [])]
                if hooks and result.accepted:
                    stored = sorted(
                        (r for r in records if r.event_id in result.inserted_ids),
                        key=lambda r: r.event_id,
                    )
                    for hook in hooks:
                        result.extra.update(hook(tenant, agent, stored) or {})
            result.duplicates += batch.repeats
            result.ignored = batch.ignored
            return result
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in _RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _claim_session_mode(tenant: Tenant, agent: Agent, session_id: str, mode: str) -> None:
    session, _ = Session.objects.get_or_create(
        tenant=tenant, session_id=session_id, defaults={"agent": agent, "livekit_report_mode": mode}
    )
    session = Session.objects.select_for_update().get(pk=session.pk)
    if session.agent_id != agent.pk:
        raise SessionOfAnotherAgent({session_id})
    if session.livekit_report_mode and session.livekit_report_mode != mode:
        raise SessionModeConflict(session.livekit_report_mode)
    if not session.livekit_report_mode:
        Session.objects.filter(pk=session.pk).update(livekit_report_mode=mode)


# The ids an insert skipped are already stored: each is a duplicate if the stored event is the same one —
# same agent and endpoint, same timestamp (except for LiveKit usage reports, see EventRecord.identity),
# session, provider, model, usage and metadata (jsonb equality: key order and spacing do not matter, and
# quantities were stored canonical) — and a conflict otherwise. Only skipped ids pay for this comparison.
_DUPLICATES_SQL = """
SELECT s.event_id
FROM jsonb_array_elements(%(rows)s::jsonb) AS e
JOIN usage_usageevent s ON s.tenant_id = %(tenant)s AND s.event_id = e->>0
WHERE s.agent_id = %(agent)s AND s.source = %(source)s
  AND (s.timestamp = (e->>1)::timestamptz OR s.source = 'livekit_usage')
  AND s.session_id = e->>2 AND s.provider = e->>3 AND s.model = e->>4
  AND s.usage = e->5 AND s.metadata = e->6
"""


def _rows_json(records: Sequence[EventRecord]) -> str:
    # One JSON document of rows rather than eight arrays: quoting 1000-element arrays of JSON text in the
    # driver cost more than the INSERT itself (docs/performance.md); PostgreSQL parses this in C. orjson
    # writes it (aware datetimes as RFC 3339) in a tenth of the standard library's time.
    return orjson.dumps(
        [[r.event_id, r.timestamp, r.session_id, r.provider, r.model, r.usage, r.metadata] for r in records]
    ).decode()


def _store(tenant: Tenant, agent: Agent, records: Sequence[EventRecord], session_mode: str) -> IngestResult:
    if not records:
        return IngestResult()
    params = {
        "tenant": tenant.pk,
        "agent": agent.pk,
        "tz": tenant.timezone,
        "mode": session_mode,
        "source": records[0].source,
        "rows": _rows_json(records),
    }
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL, params)
        rows = cursor.fetchall()
        inserted = {event_id for event_id, _ in rows if event_id}
        if others := {session_id for _, session_id in rows if session_id}:
            raise SessionOfAnotherAgent(others)  # the transaction rolls back: nothing is stored
        result = IngestResult(accepted=len(inserted))
        result.inserted_ids = inserted
        leftovers = [r for r in records if r.event_id not in inserted]
        if leftovers:
            cursor.execute(_DUPLICATES_SQL, {**params, "rows": _rows_json(leftovers)})
            same = {row[0] for row in cursor.fetchall()}
            for record in leftovers:
                if record.event_id in same:
                    result.duplicates += 1
                else:
                    result.conflicts.append({"index": record.index, "id": record.event_id})
    if result.conflicts:  # rare, so the common batch pays nothing for it
        _record_conflicts(tenant, agent, result.conflicts)
    return result


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
