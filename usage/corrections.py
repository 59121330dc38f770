"""Event corrections (DESIGN §14, docs/decisions/021-event-corrections.md): the agent that sent an event retracts it
(``POST /api/v1/events/{id}/retract``) or replaces it with a corrected one (a new event carrying ``replaces``,
stored by usage.ingest); platform staff retract one with a reason (the usage admin).

The original stays stored, every field as it was sent, and its id stays taken: a resend of it is a duplicate or a
conflict as before, never counted again. It is only marked retracted, once (a trigger refuses any other change).
The transaction that marks it takes exactly its contribution out of both rollups (the hour buckets it was added
to: ``rollups.rollup_change_ctes``, in the key order every batch uses), takes its session's first and last
usage times again from the events that still count, runs the usage hooks with it as ``retracted`` (billing
reverses its per-call cost) and records ``usage.corrected`` in the outbox. Period pricing, drafts, the late usage
of finalized periods and the balance read the rollups, so they follow.

Two corrections of one event cannot both win: each locks the original's row (FOR UPDATE) before it looks at it,
so the second sees the first's mark and is refused (409) — unless it is the same correction sent again, which
answers as the first did. The locks are taken in the order every writer takes them: events, then sessions, then
rollup rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from notifications import outbox
from tenants.models import Agent, Tenant
from usage import changes
from usage.models import EventId, Session, UsageEvent
from usage.rollups import ROLLUP_CHANGE_RESULTS, delete_emptied, rollup_change_ctes
from usage.validation import MAX_PAST, EventRecord, FieldError

USAGE_CORRECTED = "usage.corrected"
CORRECTIONS_IN_EVENT = 100  # the outbox event carries the count and at most this many corrections
MAX_REASON_LENGTH = 500

NOT_FOUND, ANOTHER_AGENT, ALREADY_CORRECTED, NOT_CORRECTABLE = 404, 403, 409, 422
# A batch with several problems answers with the status of the most basic one (and lists them all).
_PRIORITY = (NOT_FOUND, ANOTHER_AGENT, ALREADY_CORRECTED, NOT_CORRECTABLE)


@dataclass(frozen=True)
class Problem:
    status: int
    code: str  # the problem type (api.problems) and what a client may switch on
    detail: str


class CorrectionRefused(Exception):
    """Nothing was changed. ``status``, ``code`` and ``detail`` are those of the most basic problem; ``errors``
    point at each offending field of a batch (none for a retraction, whose event is named by the path)."""

    def __init__(self, problems: Sequence[tuple[str, Problem]]):
        first = min(problems, key=lambda found: _PRIORITY.index(found[1].status))
        pointer, problem = first
        super().__init__(problem.detail)
        self.status, self.code = problem.status, problem.code
        self.detail = f"{pointer}: {problem.detail}" if pointer else problem.detail
        self.errors = [FieldError(pointer, found.detail) for pointer, found in problems if pointer]


def refusal(original: UsageEvent | None, agent: Agent | None, now: datetime) -> Problem | None:
    """Why ``original`` cannot be corrected now by ``agent`` (None: platform staff), or None. The same answer
    for an event of another tenant as for none: it does not exist for the asker."""
    if original is None:
        return Problem(NOT_FOUND, "event-not-found", "No event with this id in your tenant.")
    if agent is not None and original.agent_id != agent.pk:
        return Problem(
            ANOTHER_AGENT,
            "event-of-another-agent",
            "The event was sent by another agent of your tenant; only that agent may correct it.",
        )
    if original.retracted_at is not None:
        return Problem(ALREADY_CORRECTED, "event-already-corrected", how_corrected(original))
    if original.timestamp < now - MAX_PAST:
        return Problem(
            NOT_CORRECTABLE,
            "event-not-correctable",
            "The event is more than 35 days old: usage is accepted up to 35 days late, and corrections within "
            "the same window, so that a finalized period's invoice can still be adjusted on the next one. Ask "
            "for a credit note instead.",
        )
    return None


# The answer for an event whose month was archived (usage.archive; decision 023): its id is still taken, and it is
# necessarily older than the correction window.
ARCHIVED = Problem(
    NOT_CORRECTABLE,
    "event-not-correctable",
    "The event is more than 35 days old and its month is archived: usage is accepted up to 35 days late, and "
    "corrections within the same window. Ask for a credit note instead.",
)


def stored_events(tenant: Tenant, event_ids: Iterable[str]) -> tuple[QuerySet[UsageEvent], set[str]]:
    """The tenant's stored events with these ids, and the ids taken whose events are archived. An event is found
    through the timestamp its id was claimed with (``EventId``), so each lookup reads one partition."""
    claimed = dict(
        EventId.objects.for_tenant(tenant)
        .filter(event_id__in=set(event_ids))
        .values_list("event_id", "timestamp")
    )
    events = UsageEvent.objects.for_tenant(tenant).filter(
        timestamp__in=set(claimed.values()), event_id__in=set(claimed)
    )
    held = set(events.values_list("event_id", flat=True)) if claimed else set()
    return events, set(claimed) - held


def how_corrected(event: UsageEvent) -> str:
    match event.retracted_by:
        case "replacement":
            return (
                f"The event was already replaced by event {event.retracted_by_event_id}; a correction is final. "
                f'To correct it again, replace that event ("replaces": "{event.retracted_by_event_id}").'
            )
        case "staff":
            return "The event was already retracted by platform staff; a correction is final."
        case _:
            reason = f' (reason: "{event.retraction_reason}")' if event.retraction_reason else ""
            return f"The event was already retracted{reason}; a correction is final."


def lock_sessions(tenant: Tenant, session_ids: Iterable[str]) -> None:
    """Lock the sessions whose usage times a retraction will take again, in id order, until it commits: a batch
    into one of them waits, and then widens the times the retraction left (a batch's upsert locks a session row
    even when it leaves the times as they are, so one that came first is waited for, and its events counted)."""
    ids = sorted({s for s in session_ids if s})
    if ids:
        list(
            Session.objects.for_tenant(tenant)
            .filter(session_id__in=ids)
            .order_by("session_id")
            .select_for_update()
            .values_list("pk", flat=True)
        )


def lock_originals(
    tenant: Tenant, agent: Agent, records: Sequence[EventRecord], now: datetime
) -> dict[str, UsageEvent]:
    """The events a batch's replacements name, locked until the batch commits, keyed by id. Each must be an event
    of this agent, not corrected yet and not older than 35 days, and its replacement must be for the same session;
    raises CorrectionRefused naming every offending field otherwise. An original this very replacement already
    retracted passes: the batch is a resend, and the replacement will count as a duplicate."""
    replacing = sorted((r for r in records if r.replaces), key=lambda r: r.index)
    if not replacing:
        return {}
    events, archived = stored_events(tenant, {r.replaces for r in replacing})
    originals = {event.event_id: event for event in events.order_by("event_id").select_for_update()}
    problems: list[tuple[str, Problem]] = []
    for record in replacing:
        original = originals.get(record.replaces)
        pointer = f"/events/{record.index}"
        if (
            original is not None
            and original.agent_id == agent.pk
            and original.retracted_by_event_id == record.event_id
        ):
            continue  # this very replacement retracted it: a resend
        if record.replaces in archived:
            problems.append((f"{pointer}/replaces", ARCHIVED))
        elif problem := refusal(original, agent, now):
            problems.append((f"{pointer}/replaces", problem))
        elif record.session_id != original.session_id:
            session = f"session {original.session_id}" if original.session_id else "no session"
            problems.append(
                (
                    f"{pointer}/session_id",
                    Problem(
                        NOT_CORRECTABLE,
                        "correction-of-another-session",
                        f"A replacement is for the session of the event it replaces ({session}).",
                    ),
                )
            )
    if problems:
        raise CorrectionRefused(problems)
    # Their sessions are the replacements' own, which the batch's statement locks in session order as any
    # batch does (locking them here, earlier, would take them out of that order).
    return originals


def as_record(event: UsageEvent) -> EventRecord:
    """A stored event as the usage hooks see events (index -1: it belongs to no request's list)."""
    return EventRecord(
        -1,
        event.event_id,
        event.timestamp,
        event.session_id,
        event.provider,
        event.model,
        event.usage,
        event.metadata,
        event.source,
        event.replaces,
    )


class RollupsDisagree(RuntimeError):
    """A retraction found no rollup bucket to take its event from: the rollups disagree with the events (a bug,
    or buckets rebuilt under another time zone). The correction is rolled back; ``verify_rollups`` reports where.
    """


def read_statement_rows(rows: Iterable[tuple[str, str]]) -> tuple[dict[str, set[str]], list[tuple[str, int]]]:
    """A correcting statement's (kind, value) rows: the values of each kind, and the rollup rows it emptied.
    Raises RollupsDisagree (in the transaction, which then rolls back) for a bucket it found missing."""
    values: dict[str, set[str]] = {}
    emptied: list[tuple[str, int]] = []
    for kind, value in rows:
        if kind == "missing":
            raise RollupsDisagree(f"no rollup bucket {value!r} to take a retracted event from")
        if kind.startswith("usage_"):
            emptied.append((kind, int(value)))
        else:
            values.setdefault(kind, set()).add(value)
    return values, emptied


# The sessions' first and last usage from the events that still count (NULL when none does). The sessions are
# locked by the correction (lock_sessions, or the replacement batch's own upsert), so no batch can add an event
# the recount misses.
_SESSION_TIMES_SQL = """
UPDATE usage_session s
SET first_usage_at = t.first_at, last_usage_at = t.last_at
FROM (
    SELECT named.session_id, min(e.timestamp) AS first_at, max(e.timestamp) AS last_at
    FROM unnest(%(sessions)s::text[]) AS named(session_id)
    LEFT JOIN usage_usageevent e
           ON e.tenant_id = %(tenant)s AND e.session_id = named.session_id AND e.retracted_at IS NULL
    GROUP BY named.session_id
) t
WHERE s.tenant_id = %(tenant)s AND s.session_id = t.session_id
  AND (s.first_usage_at, s.last_usage_at) IS DISTINCT FROM (t.first_at, t.last_at)
"""


def after_retraction(
    tenant: Tenant, agent_id: int, retracted: Sequence[UsageEvent], emptied: list[tuple[str, int]]
) -> None:
    """What follows a correcting statement in its transaction: the rollup rows it emptied go, the sessions'
    usage times are taken again, and ``usage.corrected`` is recorded in the outbox (one per transaction)."""
    delete_emptied(tenant.pk, emptied)
    sessions = sorted({event.session_id for event in retracted if event.session_id})
    if sessions:
        with connection.cursor() as cursor:
            cursor.execute(_SESSION_TIMES_SQL, {"tenant": tenant.pk, "sessions": sessions})
    marked = list(
        UsageEvent.objects.for_tenant(tenant)
        .filter(timestamp__in={e.timestamp for e in retracted}, event_id__in={e.event_id for e in retracted})
        .order_by("event_id")
    )
    outbox.record(
        tenant.pk,
        USAGE_CORRECTED,
        {
            "agent_id": agent_id,
            "retracted_at": marked[0].retracted_at.isoformat(),
            "corrections": len(marked),
            "events": [
                {
                    "event_id": event.event_id,
                    "retracted_by": event.retracted_by,
                    "replaced_by": event.retracted_by_event_id or None,
                    "reason": event.retraction_reason,
                }
                for event in marked[:CORRECTIONS_IN_EVENT]
            ],
        },
    )


_RETRACT_SQL = f"""
WITH retracted AS (
    UPDATE usage_usageevent
    SET retracted_at = now(), retraction_reason = %(reason)s, retracted_by_user_id = %(user)s
    WHERE tenant_id = %(tenant)s AND timestamp = %(timestamp)s AND event_id = %(event_id)s AND retracted_at IS NULL
    RETURNING timestamp, session_id, provider, model, usage, -1 AS sign
),
{rollup_change_ctes("retracted")}
SELECT 'retracted', '' FROM retracted
UNION ALL {ROLLUP_CHANGE_RESULTS}
"""  # noqa: S608 - constant SQL fragments only


@dataclass(frozen=True)
class Retraction:
    """The event as stored after the call, and whether this call retracted it (False: it had been retracted the
    same way already, and the call was an identical resend)."""

    event: UsageEvent
    changed: bool


def retract(
    tenant: Tenant,
    event_id: str,
    *,
    agent: Agent | None = None,
    user=None,
    reason: str = "",
    now: datetime | None = None,
    attempts: int = 3,
) -> Retraction:
    """Retract the tenant's event ``event_id``, for the ``agent`` that sent it or for a member of staff
    (``user``, with a ``reason``), in one transaction. Raises CorrectionRefused (nothing changed). Retracting
    again what the same agent retracted with the same reason changes nothing and answers the same."""
    if (agent is None) == (user is None):
        raise TypeError("an event is retracted by the agent that sent it or by a member of staff")
    if user is not None and not reason.strip():
        raise ValueError("staff give a reason for a retraction")
    when = now or timezone.now()

    def work() -> Retraction:
        with transaction.atomic():
            events, archived = stored_events(tenant, [event_id])
            if archived:
                raise CorrectionRefused([("", ARCHIVED)])
            original = events.select_for_update().first()
            if (
                original is not None
                and agent is not None
                and original.agent_id == agent.pk
                and original.retracted_by == "agent"
                and original.retraction_reason == reason
            ):
                return Retraction(original, changed=False)
            if problem := refusal(original, agent, when):
                raise CorrectionRefused([("", problem)])
            lock_sessions(tenant, [original.session_id])
            params = {
                "tenant": tenant.pk,
                "agent": original.agent_id,
                "tz": tenant.timezone,
                "event_id": event_id,
                "timestamp": original.timestamp,
                "reason": reason,
                "user": user.pk if user is not None else None,
            }
            with connection.cursor() as cursor:
                cursor.execute(_RETRACT_SQL, params)
                values, emptied = read_statement_rows(cursor.fetchall())
            if (
                "retracted" not in values
            ):  # the row lock makes this impossible; never report what did not happen
                raise AssertionError(f"event {event_id} was not retracted")
            after_retraction(tenant, original.agent_id, [original], emptied)
            sender = agent or Agent.objects.get(pk=original.agent_id)
            changes.run_hooks(tenant, sender, changes.UsageChange(retracted=[as_record(original)]))
            original.refresh_from_db()
            return Retraction(original, changed=True)

    return changes.retrying(work, attempts)
