"""The two rollups: how ingestion writes them, how every usage read queries them, and how they are checked.

``usage_usagerollup`` is keyed by (tenant, agent, session, meter, provider, model, hour) and serves the
session views and the CSV export; ``usage_agentrollup`` drops the session (far fewer rows) and serves period
totals and every breakdown not by session. Both are kept by the ingest statement (``ROLLUP_CTES``, composed
into usage.ingest's one statement) from exactly the rows it inserted, in tenant-local hours
(``hour_bucket``); ``rollup_drift`` recomputes both from the raw events. Reads never touch raw events.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

from django.db import connection, transaction

from usage import archive


def hour_bucket(timestamp: str, tz: str) -> str:
    """The SQL of a rollup's hour: the tenant-local hour that the ``timestamp`` expression falls in (``tz`` is
    an SQL expression naming the tenant's time zone). Any tenant-local day or month boundary is then exact."""
    return f"date_trunc('hour', {timestamp}, {tz})"


def _grouped(rows: str, quantity: str, count: str) -> str:
    return f"""
grouped AS (
    SELECT i.session_id, u.key AS meter, i.provider, i.model, {hour_bucket("i.timestamp", "%(tz)s")} AS hour,
           {quantity} AS quantity, {count} AS event_count
    FROM {rows} i CROSS JOIN LATERAL jsonb_each_text(i.usage) AS u
    GROUP BY 1, 2, 3, 4, 5
),"""  # noqa: S608 - constant SQL fragments only


# The rollup part of usage.ingest's statement: CTEs that add the rows of a preceding CTE named ``inserted``
# (columns timestamp, session_id, provider, model, usage) to both rollups, with the parameters %(tenant)s,
# %(agent)s and %(tz)s (the tenant's time zone). Keys are upserted in key order, so that overlapping batches
# do not deadlock; the per-agent rows are the per-session ones summed, so the two tables cannot disagree.
ROLLUP_CTES = f"""{_grouped("inserted", "sum(u.value::numeric)", "count(*)")}
rolled_up AS (
    INSERT INTO usage_usagerollup (tenant_id, agent_id, session_id, meter, provider, model, hour, quantity,
                                   event_count)
    SELECT %(tenant)s, %(agent)s, session_id, meter, provider, model, hour, quantity, event_count
    FROM grouped ORDER BY 3, 4, 5, 6, 7
    ON CONFLICT (tenant_id, agent_id, session_id, meter, provider, model, hour) DO UPDATE
       SET quantity = usage_usagerollup.quantity + EXCLUDED.quantity,
           event_count = usage_usagerollup.event_count + EXCLUDED.event_count
),
agent_rolled_up AS (
    INSERT INTO usage_agentrollup (tenant_id, agent_id, meter, provider, model, hour, quantity, event_count)
    SELECT %(tenant)s, %(agent)s, meter, provider, model, hour, sum(quantity), sum(event_count)
    FROM grouped GROUP BY 3, 4, 5, 6 ORDER BY 3, 4, 5, 6
    ON CONFLICT (tenant_id, agent_id, meter, provider, model, hour) DO UPDATE
       SET quantity = usage_agentrollup.quantity + EXCLUDED.quantity,
           event_count = usage_agentrollup.event_count + EXCLUDED.event_count
)"""  # noqa: S608 - constant SQL fragments only


def rollup_change_ctes(rows: str) -> str:
    """``ROLLUP_CTES`` for a correction: the rows of the CTE ``rows`` also have a ``sign``, 1 for an event that
    now counts and -1 for one retracted (usage.corrections), and each bucket moves by its net change, upserted in
    the same key order as any batch's, so a correction and a batch do not deadlock either.

    A proposed row must pass the tables' checks (quantity and count ≥ 0) before PostgreSQL looks for a conflict,
    so it carries the change clamped at 0, and the update takes the true change from ``grouped`` itself. A
    bucket a retraction takes from is one its event was added to, so it exists; a change that would take one
    below zero fails those checks, and one that finds its bucket missing is reported by ``ROLLUP_CHANGE_RESULTS``
    — either way the correction rolls back rather than leave rollups that disagree with the events."""
    return f"""{_grouped(rows, "sum(u.value::numeric * i.sign)", "sum(i.sign)")}
agent_grouped AS (
    SELECT meter, provider, model, hour, sum(quantity) AS quantity, sum(event_count) AS event_count
    FROM grouped GROUP BY 1, 2, 3, 4
),
rolled_up AS (
    INSERT INTO usage_usagerollup (tenant_id, agent_id, session_id, meter, provider, model, hour, quantity,
                                   event_count)
    SELECT %(tenant)s, %(agent)s, session_id, meter, provider, model, hour, greatest(quantity, 0),
           greatest(event_count, 0)
    FROM grouped ORDER BY 3, 4, 5, 6, 7
    ON CONFLICT (tenant_id, agent_id, session_id, meter, provider, model, hour) DO UPDATE
       SET (quantity, event_count) = (
           SELECT usage_usagerollup.quantity + g.quantity, usage_usagerollup.event_count + g.event_count
           FROM grouped g
           WHERE g.session_id = EXCLUDED.session_id AND g.meter = EXCLUDED.meter AND g.provider = EXCLUDED.provider
             AND g.model = EXCLUDED.model AND g.hour = EXCLUDED.hour)
    RETURNING id, quantity, event_count
),
agent_rolled_up AS (
    INSERT INTO usage_agentrollup (tenant_id, agent_id, meter, provider, model, hour, quantity, event_count)
    SELECT %(tenant)s, %(agent)s, meter, provider, model, hour, greatest(quantity, 0), greatest(event_count, 0)
    FROM agent_grouped ORDER BY 3, 4, 5, 6
    ON CONFLICT (tenant_id, agent_id, meter, provider, model, hour) DO UPDATE
       SET (quantity, event_count) = (
           SELECT usage_agentrollup.quantity + g.quantity, usage_agentrollup.event_count + g.event_count
           FROM agent_grouped g
           WHERE g.meter = EXCLUDED.meter AND g.provider = EXCLUDED.provider AND g.model = EXCLUDED.model
             AND g.hour = EXCLUDED.hour)
    RETURNING id, quantity, event_count
)"""  # noqa: S608 - constant SQL fragments only


# With ``rollup_change_ctes``, as (kind, value) text rows: the rollup rows the correction left without events
# (kind: their table; the caller deletes them: ``delete_emptied``), and ("missing", key) for any bucket a
# retraction should have taken from but did not find (the statement's snapshot is from before its own writes).
ROLLUP_CHANGE_RESULTS = """
SELECT 'usage_usagerollup', id::text FROM rolled_up WHERE event_count = 0 AND quantity = 0
UNION ALL SELECT 'usage_agentrollup', id::text FROM agent_rolled_up WHERE event_count = 0 AND quantity = 0
UNION ALL SELECT 'missing', concat_ws(' ', g.session_id, g.meter, g.provider, g.model, g.hour) FROM grouped g
WHERE (g.quantity < 0 OR g.event_count < 0) AND NOT EXISTS (
    SELECT 1 FROM usage_usagerollup r
    WHERE r.tenant_id = %(tenant)s AND r.agent_id = %(agent)s AND r.session_id = g.session_id
      AND r.meter = g.meter AND r.provider = g.provider AND r.model = g.model AND r.hour = g.hour)
UNION ALL SELECT 'missing', concat_ws(' ', g.meter, g.provider, g.model, g.hour) FROM agent_grouped g
WHERE (g.quantity < 0 OR g.event_count < 0) AND NOT EXISTS (
    SELECT 1 FROM usage_agentrollup r
    WHERE r.tenant_id = %(tenant)s AND r.agent_id = %(agent)s AND r.meter = g.meter AND r.provider = g.provider
      AND r.model = g.model AND r.hour = g.hour)"""


def delete_emptied(tenant_id: int, emptied: list[tuple[str, int]]) -> None:
    """Delete the rollup rows a correction emptied (``ROLLUP_CHANGE_RESULTS``), in the correction's transaction, which
    holds their locks: a bucket without events is no bucket, as if its events had never come (a later batch
    creates it again). A row whose count reached 0 with a quantity left is drift and stays, for
    ``rollup_drift`` to report."""
    for table in ("usage_usagerollup", "usage_agentrollup"):
        ids = [row_id for name, row_id in emptied if name == table]
        if ids:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {table} WHERE tenant_id = %s AND id = ANY(%s) AND event_count = 0",  # noqa: S608 - constant table names
                    [tenant_id, ids],
                )


def usage_totals(tenant_id: int, start: datetime, end: datetime) -> dict[tuple[str, str, str], Decimal]:
    """Quantity per (meter, provider, model) of rollup buckets starting in [start, end).

    Buckets are tenant-local hours, so any tenant-local day or month boundary is exact.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT meter, provider, model, sum(quantity) FROM usage_agentrollup
            WHERE tenant_id = %s AND hour >= %s AND hour < %s
            GROUP BY 1, 2, 3
            """,
            [tenant_id, start, end],
        )
        return {(meter, provider, model): quantity for meter, provider, model, quantity in cursor.fetchall()}


def period_usage(
    tenant_id: int, start: datetime, end: datetime
) -> tuple[dict[tuple[str, str, str], Decimal], int]:
    """``usage_totals(…)`` and the number of agents that reported any usage in [start, end), from one pass
    over the rollups: what pricing a period needs, and every priced page prices the current period first."""
    return windows_usage([(tenant_id, start, end)])[(tenant_id, start, end)]


Window = tuple[int, datetime, datetime]  # (tenant, start, end)


def windows_usage(
    windows: list[Window],
) -> dict[Window, tuple[dict[tuple[str, str, str], Decimal], int]]:
    """:func:`period_usage` of many (tenant, start, end) windows in one statement: a batch of invoices reads
    all its tenants' periods at once (each window an index range scan of the per-agent rollups)."""
    found: dict[Window, tuple[dict[tuple[str, str, str], Decimal], int]] = {w: ({}, 0) for w in windows}
    if not windows:
        return found
    ordered = list(found)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT w.n, GROUPING(r.agent_id), r.meter, r.provider, r.model, sum(r.quantity)
            FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY
                 AS w(tenant_id, start_at, end_at, n)
            JOIN usage_agentrollup r ON r.tenant_id = w.tenant_id AND r.hour >= w.start_at AND r.hour < w.end_at
            GROUP BY GROUPING SETS ((w.n, r.meter, r.provider, r.model), (w.n, r.agent_id))
            """,
            [[w[0] for w in ordered], [w[1] for w in ordered], [w[2] for w in ordered]],
        )
        agents: dict[Window, int] = {}
        for n, by_model, meter, provider, model, quantity in cursor.fetchall():
            window = ordered[n - 1]
            if by_model:
                found[window][0][(meter, provider, model)] = quantity
            else:
                agents[window] = agents.get(window, 0) + 1
    return {w: (totals, agents.get(w, 0)) for w, (totals, _) in found.items()}


GROUPINGS = {
    "meter": "meter",
    "provider": "provider",
    "model": "model",
    "agent": "agent_id",
    "session": "session_id",
    "day": "(hour AT TIME ZONE %(tz)s)::date",
    "hour": "hour",
}
FILTERS = {
    "meter": "meter",
    "provider": "provider",
    "model": "model",
    "agent": "agent_id",
    "session": "session_id",
    "sessions": "session_id",  # a list: any of these sessions (a page of a report by session)
}


def _table(keys: list[str], filters: dict | None) -> str:
    """The per-session rollups when a session is grouped or filtered on, else the far smaller per-agent
    ones (the same totals: both are kept from the same rows in one statement)."""
    if "session" in keys or {"session", "sessions"} & set(filters or {}):
        return "usage_usagerollup"
    return "usage_agentrollup"


def _where(tenant_id: int, start: datetime, end: datetime, filters: dict | None) -> tuple[str, dict]:
    where = ["tenant_id = %(tenant)s", "hour >= %(start)s", "hour < %(end)s"]
    params: dict = {"tenant": tenant_id, "start": start, "end": end}
    for name, value in (filters or {}).items():
        placeholder = f"%(f_{name})s"
        where.append(f"{FILTERS[name]} = {f'ANY({placeholder})' if name == 'sessions' else placeholder}")
        params[f"f_{name}"] = value
    return " AND ".join(where), params


def _keys(group_by: list[str], filters: dict | None) -> list[str]:
    keys = list(dict.fromkeys([*group_by, "meter", "provider", "model"]))
    unknown = set(keys) - GROUPINGS.keys() | set(filters or {}) - FILTERS.keys()
    if unknown:
        raise ValueError(f"unknown grouping or filter: {sorted(unknown)}")
    return keys


def _keyed(keys: list[str], where: str, table: str) -> str:
    """A subquery with one column per key (named after it), quantity and event_count: the rollups summed
    per hour and the keys' columns first, so that what is grouped further is a few rows per hour (a large
    tenant's month has ~10⁵ per-session rollup rows, in ~700 hours) and the day is computed once per hour.
    Per-agent rows are already one per (hour, agent, meter, provider, model), a few per hour: they are summed
    straight to the keys (with the day computed per row), which leaves the few hundred rows of the finest
    grouping asked for."""
    select = ", ".join(f"{GROUPINGS[k]} AS {k}" for k in keys)
    if table == "usage_agentrollup":
        by_keys = ", ".join(str(i + 1) for i in range(len(keys)))
        return (
            f"SELECT {select}, sum(quantity) AS quantity, sum(event_count) AS event_count "  # noqa: S608 - whitelisted
            f"FROM {table} WHERE {where} GROUP BY {by_keys}"
        )
    columns = list(dict.fromkeys(["hour", *(GROUPINGS[k] for k in keys if k != "day")]))
    positions = ", ".join(str(i + 1) for i in range(len(columns)))
    hourly = (
        f"SELECT {', '.join(columns)}, sum(quantity) AS quantity, sum(event_count) AS event_count "  # noqa: S608 - whitelisted identifiers
        f"FROM {table} WHERE {where} GROUP BY {positions}"
    )
    return f"SELECT {select}, quantity, event_count FROM ({hourly}) AS hourly"  # noqa: S608 - whitelisted


def usage_rows(
    tenant_id: int,
    tz: str,
    start: datetime,
    end: datetime,
    group_by: list[str],
    filters: dict | None = None,
    *,
    limit: int | None = None,
) -> list[dict]:
    """Rolled-up usage in [start, end), grouped by any of GROUPINGS (always also by meter, provider and
    model, which pricing needs) and filtered by FILTERS. Reads rollups only, never raw events."""
    keys = _keys(group_by, filters)
    where, params = _where(tenant_id, start, end, filters)
    params["tz"] = tz  # the "day" grouping
    select = ", ".join(f"{GROUPINGS[k]} AS {k}" for k in keys)
    positions = ", ".join(str(i + 1) for i in range(len(keys)))
    sql = (
        f"SELECT {select}, sum(quantity) AS quantity, sum(event_count) AS events FROM {_table(keys, filters)} "  # noqa: S608 - identifiers come from the whitelists above
        f"WHERE {where} GROUP BY {positions} ORDER BY {positions}"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [c.name for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def usage_row_sets(
    tenant_id: int,
    tz: str,
    start: datetime,
    end: datetime,
    groupings: list[str | None],
    filters: dict | None = None,
) -> list[list[dict]]:
    """``usage_rows(tenant_id, tz, start, end, [g] if g else [], filters)`` for each g of ``groupings``, the
    same rows in the same order, from one pass over the rollups (summed per hour, then GROUPING SETS).

    Each grouping is one of GROUPINGS other than provider and model (whose rows are ordered differently),
    or None for rows by (meter, provider, model) only.
    """
    wanted = [g or "meter" for g in groupings]  # [meter] groups exactly like [] (meter, provider, model)
    if {"provider", "model"}.intersection(wanted):
        raise ValueError("usage_row_sets groups by meter, agent, session, day or hour; use usage_rows")
    heads = [g for g in dict.fromkeys(wanted) if g != "meter"]
    # heads…, meter, provider, model: ordered by these, each set's rows come in usage_rows's order.
    keys = _keys(heads, filters)
    where, params = _where(tenant_id, start, end, filters)
    params["tz"] = tz  # the "day" grouping
    sets = {
        g: [g, "meter", "provider", "model"] if g != "meter" else ["meter", "provider", "model"]
        for g in wanted
    }
    flags = [*heads, "meter"]
    sql = (
        f"SELECT GROUPING({', '.join(flags)}) AS grouping_set, {', '.join(keys)}, "  # noqa: S608 - whitelisted identifiers
        f"sum(quantity) AS quantity, sum(event_count)::bigint AS events FROM ({_keyed(keys, where, _table(keys, filters))}) AS keyed "
        f"GROUP BY GROUPING SETS ({', '.join('(' + ', '.join(s) + ')' for s in sets.values())}) "
        f"ORDER BY grouping_set, {', '.join(keys)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [c.name for c in cursor.description]
        fetched = cursor.fetchall()
    by_set: dict[str, list[dict]] = {g: [] for g in sets}
    for row in fetched:
        mask = row[0]
        # GROUPING() sets a column's bit when the row is not grouped by it; one head (or none) is grouped.
        head = next((h for i, h in enumerate(heads) if not mask & (1 << (len(flags) - 1 - i))), "meter")
        by_set[head].append(
            {
                k: v
                for k, v in zip(columns[1:], row[1:], strict=True)
                if k in sets[head] or k in ("quantity", "events")
            }
        )
    return [by_set[g] for g in wanted]


def session_ids(
    tenant_id: int, start: datetime, end: datetime, filters: dict | None, after: str | None, limit: int
) -> list[str]:
    """Up to ``limit`` ids of the sessions with usage in [start, end) matching ``filters``, in id order, after
    ``after`` (None: from the first; usage outside any session is the session ""): one page of a report by
    session. Read by keyset from the index (tenant, session_id, hour), so any page costs about the same: a few
    index entries per session, those of sessions without usage in the range skipped in the index."""
    where, params = _where(tenant_id, start, end, filters)
    if after is not None:
        where += " AND session_id > %(after)s"
        params["after"] = after
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT session_id FROM usage_usagerollup WHERE {where} "  # noqa: S608 - whitelisted
            f"ORDER BY session_id LIMIT {int(limit)}",
            params,
        )
        return [row[0] for row in cursor.fetchall()]


def iter_usage_rows(
    tenant_id: int, start: datetime, end: datetime, filters: dict | None = None
) -> Iterator[tuple]:
    """Hourly rollup rows for CSV export, streamed from a server-side cursor (bounded memory)."""
    where, params = _where(tenant_id, start, end, filters)
    sql = (
        "SELECT hour, agent_id, session_id, meter, provider, model, quantity, event_count "  # noqa: S608 - whitelisted
        f"FROM usage_usagerollup WHERE {where} ORDER BY hour, agent_id, session_id, meter, provider, model"
    )
    with transaction.atomic(), connection.connection.cursor(name="usage_export") as cursor:
        cursor.itersize = 2000
        cursor.execute(sql, params)
        yield from cursor


_DRIFT_SQL = f"""
WITH from_events AS (
    SELECT e.agent_id, e.session_id, u.key AS meter, e.provider, e.model,
           {hour_bucket("e.timestamp", "t.timezone")} AS hour,
           sum(u.value::numeric) AS quantity, count(*) AS event_count
    FROM usage_usageevent e
    JOIN tenants_tenant t ON t.id = e.tenant_id
    CROSS JOIN LATERAL jsonb_each_text(e.usage) AS u
    WHERE e.tenant_id = %(tenant)s AND e.retracted_at IS NULL AND e.timestamp >= %(since)s
      AND {hour_bucket("e.timestamp", "t.timezone")} >= %(since)s
    GROUP BY 1, 2, 3, 4, 5, 6
), per_session AS (
    SELECT 'usage_usagerollup' AS rollup, coalesce(f.agent_id, r.agent_id) AS agent_id,
           coalesce(f.session_id, r.session_id) AS session_id, coalesce(f.meter, r.meter) AS meter,
           coalesce(f.provider, r.provider) AS provider, coalesce(f.model, r.model) AS model,
           coalesce(f.hour, r.hour) AS hour, f.quantity, r.quantity, f.event_count, r.event_count
    FROM from_events f
    FULL OUTER JOIN (SELECT * FROM usage_usagerollup WHERE tenant_id = %(tenant)s AND hour >= %(since)s) r
        USING (agent_id, session_id, meter, provider, model, hour)
    WHERE f.quantity IS DISTINCT FROM r.quantity OR f.event_count IS DISTINCT FROM r.event_count
), per_agent AS (
    SELECT 'usage_agentrollup', coalesce(f.agent_id, r.agent_id), NULL, coalesce(f.meter, r.meter),
           coalesce(f.provider, r.provider), coalesce(f.model, r.model), coalesce(f.hour, r.hour),
           f.quantity, r.quantity, f.event_count, r.event_count
    FROM (
        SELECT agent_id, meter, provider, model, hour, sum(quantity) AS quantity,
               sum(event_count) AS event_count
        FROM from_events GROUP BY 1, 2, 3, 4, 5
    ) f
    FULL OUTER JOIN (SELECT * FROM usage_agentrollup WHERE tenant_id = %(tenant)s AND hour >= %(since)s) r
        USING (agent_id, meter, provider, model, hour)
    WHERE f.quantity IS DISTINCT FROM r.quantity OR f.event_count IS DISTINCT FROM r.event_count
)
SELECT * FROM per_session UNION ALL SELECT * FROM per_agent
ORDER BY 1, 2, 3, 4, 5, 6, 7
"""  # noqa: S608 - constant SQL fragments only


def rollup_drift(tenant_id: int) -> list[dict]:
    """Groups whose rollup total differs from the sum of the tenant's raw events that count — those not
    retracted (usage.corrections) — (should be none), in either rollup table (``session_id`` is None for
    ``usage_agentrollup``). Only hours whose events are all still in PostgreSQL are compared: rollups outlive
    the raw events of archived months (usage.archive)."""
    since = archive.held_since() or datetime(1, 1, 1, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(_DRIFT_SQL, {"tenant": tenant_id, "since": since})
        return [
            {
                "rollup": row[0],
                "agent_id": row[1],
                "session_id": row[2],
                "meter": row[3],
                "provider": row[4],
                "model": row[5],
                "hour": row[6].isoformat(),
                "events_quantity": str(row[7]),
                "rollup_quantity": str(row[8]),
                "events_count": row[9],
                "rollup_count": row[10],
            }
            for row in cursor.fetchall()
        ]
