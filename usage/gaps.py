"""Where a provider's token details do not add up to its totals (issue 17 part 3).

``usage.meters`` bills what the details leave unclassified as text and records each gap on the stored event,
as ``gap_<kind>`` keys of its metadata (``usage.livekit``): ``unclassified_input_tokens`` (input total above the
sum of its text, audio and image details), ``unclassified_cached_tokens``, ``unclassified_output_tokens``,
``input_details_exceed_total`` / ``output_details_exceed_total`` (details above the total: the total is
billed), ``negative_<meter>`` (a cached figure above its modality) and ``unbilled_output_image_tokens``.
This module adds them up per model, for one session or for a range of the usage explorer. Only LiveKit-sourced
events that still count (not retracted: usage.corrections) are read: an agent may put any key in the metadata of
``POST /events``, and a value that is not a number is skipped, never an error. A range reads only the events
that carry a gap, through a partial index (``usageevent_gaps``, migration 0010) whose predicate the query
repeats word for word, so a month of 10 M events costs what its few gap events cost.

:func:`audio_check` is the plausibility check of a session's audio tokens (docs/decisions/014, "Audio tokens
against the session's length").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum

_SQL = r"""
SELECT e.provider, e.model, substr(g.key, 5) AS kind, sum(g.value::numeric), count(*)
FROM usage_usageevent e CROSS JOIN LATERAL jsonb_each_text(e.metadata) AS g
WHERE e.tenant_id = %(tenant)s AND e.session_id = %(session)s AND e.retracted_at IS NULL
  AND e.source IN ('livekit_metrics', 'livekit_usage')
  AND g.key LIKE 'gap\_%%' AND g.value ~ '^-?[0-9]{1,20}(\.[0-9]{1,12})?$'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def session_gaps(tenant_id: int, session_id: str) -> list[dict]:
    """``[{"provider", "model", "kind", "tokens", "events"}]``: the session's reported-vs-detail gaps per model."""
    with connection.cursor() as cursor:
        cursor.execute(_SQL, {"tenant": tenant_id, "session": session_id})
        return [
            {"provider": provider, "model": model, "kind": kind, "tokens": Decimal(total), "events": events}
            for provider, model, kind, total, events in cursor.fetchall()
        ]


# The partial index's predicate (migration 0010), repeated as is so the planner can use the index.
GAP_EVENTS = "(e.source)::text LIKE 'livekit%%' AND (e.metadata)::text LIKE '%%\"gap_%%'"
_RANGE_FILTERS = {
    "agent": "e.agent_id",
    "provider": "e.provider",
    "model": "e.model",
    "session": "e.session_id",
}


def range_gaps(tenant_id: int, begin: datetime, end: datetime, filters: dict | None = None) -> list[dict]:
    """The gaps per model of the events in [begin, end) matching the explorer's ``filters`` (agent, provider,
    model, session; a meter filter does not apply: a gap belongs to an event's tokens, not to one meter)."""
    params = {"tenant": tenant_id, "begin": begin, "end": end}
    where = []
    for name, column in _RANGE_FILTERS.items():
        if filters and filters.get(name) is not None:
            where.append(f"{column} = %({name})s")
            params[name] = filters[name]
    sql = f"""
SELECT e.provider, e.model, substr(g.key, 5) AS kind, sum(g.value::numeric), count(*)
FROM usage_usageevent e CROSS JOIN LATERAL jsonb_each_text(e.metadata) AS g
WHERE e.tenant_id = %(tenant)s AND e.timestamp >= %(begin)s AND e.timestamp < %(end)s AND {GAP_EVENTS}
  AND e.retracted_at IS NULL{"".join(" AND " + w for w in where)}
  AND g.key LIKE 'gap\\_%%' AND g.value ~ '^-?[0-9]{{1,20}}(\\.[0-9]{{1,12}})?$'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""  # noqa: S608 - the filters are whitelisted column names; values are parameters
    # PostgreSQL cannot estimate the index's predicate (metadata::text LIKE …) and guesses tens of thousands of
    # rows for what are a few, so it would start a parallel worker for them: ~35 ms of start-up for a read of
    # well under a millisecond (measured on the partitioned events at 10 M). Serial, for this statement only:
    # a SET LOCAL lasts until the outermost transaction ends (a savepoint's release keeps it), so inside a
    # caller's transaction the setting it found is put back once the statement has run.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('max_parallel_workers_per_gather')")
        (before,) = cursor.fetchone()
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        cursor.execute("SELECT set_config('max_parallel_workers_per_gather', %s, true)", [before])
    return [
        {"provider": provider, "model": model, "kind": kind, "tokens": Decimal(total), "events": events}
        for provider, model, kind, total, events in rows
    ]


# Audio tokens per second of audio, as the providers count them (the sources are in decision 014):
# Google's Gemini API counts audio at 32 tokens per second; OpenAI's realtime models count output audio at
# about 20 tokens per second (measured and reported by OpenAI's developer forum; OpenAI's docs give none).
AUDIO_TOKENS_PER_SECOND = (("gemini", Decimal(32)), ("google", Decimal(32)), ("openai", Decimal(20)))
# Generated audio can outrun playback (an interrupted reply was generated in full), so only more than twice
# the session's length, plus a few seconds, is flagged.
AUDIO_SLACK_FACTOR = Decimal(2)
AUDIO_SLACK_SECONDS = Decimal(10)


@dataclass(frozen=True)
class AudioCheck:
    provider: str
    model: str
    tokens: Decimal
    tokens_per_second: Decimal
    audio_seconds: Decimal  # what the tokens stand for
    session_seconds: Decimal

    @property
    def ratio(self) -> Decimal:
        return (self.audio_seconds / self.session_seconds).quantize(Decimal("0.1"))


def _audio_rate(provider: str, model: str) -> Decimal | None:
    names = f"{provider} {model}".casefold()
    return next((rate for name, rate in AUDIO_TOKENS_PER_SECOND if name in names), None)


def audio_check(tenant_id: int, session) -> list[AudioCheck]:
    """Models whose output audio tokens stand for far more audio than the session lasted (its reported start
    and end, else its first and last usage): ``[]`` when all is plausible or the length is unknown."""
    from usage.models import UsageRollup

    start = session.started_at or session.first_usage_at
    end = session.ended_at or session.last_usage_at
    if not start or not end or end <= start:
        return []
    seconds = Decimal(str((end - start).total_seconds()))
    rows = (
        UsageRollup.objects.filter(tenant_id=tenant_id, session_id=session.session_id)
        .filter(meter="llm_output_audio_tokens")
        .values_list("provider", "model")
        .annotate(tokens=Sum("quantity"))
    )
    found = []
    for provider, model, tokens in rows:
        rate = _audio_rate(provider, model)
        if rate is None or not tokens:
            continue
        audio = tokens / rate
        if audio > seconds * AUDIO_SLACK_FACTOR + AUDIO_SLACK_SECONDS:
            found.append(AudioCheck(provider, model, tokens, rate, audio, seconds))
    return found
