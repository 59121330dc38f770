"""Read queries over usage, for billing, the portal and the read API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import connection

_DRIFT_SQL = """
WITH from_events AS (
    SELECT e.agent_id, e.session_id, u.key AS meter, e.provider, e.model,
           date_trunc('hour', e.timestamp, t.timezone) AS hour,
           sum(u.value::numeric) AS quantity, count(*) AS event_count
    FROM usage_usageevent e
    JOIN tenants_tenant t ON t.id = e.tenant_id
    CROSS JOIN LATERAL jsonb_each_text(e.usage) AS u
    WHERE e.tenant_id = %(tenant)s
    GROUP BY 1, 2, 3, 4, 5, 6
), rollups AS (
    SELECT agent_id, session_id, meter, provider, model, hour, quantity, event_count
    FROM usage_usagerollup WHERE tenant_id = %(tenant)s
)
SELECT coalesce(f.agent_id, r.agent_id), coalesce(f.session_id, r.session_id), coalesce(f.meter, r.meter),
       coalesce(f.provider, r.provider), coalesce(f.model, r.model), coalesce(f.hour, r.hour),
       f.quantity, r.quantity, f.event_count, r.event_count
FROM from_events f
FULL OUTER JOIN rollups r USING (agent_id, session_id, meter, provider, model, hour)
WHERE f.quantity IS DISTINCT FROM r.quantity OR f.event_count IS DISTINCT FROM r.event_count
ORDER BY 1, 2, 3, 4, 5, 6
"""


def rollup_drift(tenant_id: int) -> list[dict]:
    """Groups whose rollup total differs from the sum of the tenant's raw events (should be none)."""
    with connection.cursor() as cursor:
        cursor.execute(_DRIFT_SQL, {"tenant": tenant_id})
        return [
            {
                "agent_id": row[0],
                "session_id": row[1],
                "meter": row[2],
                "provider": row[3],
                "model": row[4],
                "hour": row[5].isoformat(),
                "events_quantity": str(row[6]),
                "rollup_quantity": str(row[7]),
                "events_count": row[8],
                "rollup_count": row[9],
            }
            for row in cursor.fetchall()
        ]


def usage_totals(tenant_id: int, start: datetime, end: datetime) -> dict[tuple[str, str, str], Decimal]:
    """Quantity per (meter, provider, model) of rollup buckets starting in [start, end).

    Buckets are tenant-local hours, so any tenant-local day or month boundary is exact.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT meter, provider, model, sum(quantity) FROM usage_usagerollup
            WHERE tenant_id = %s AND hour >= %s AND hour < %s
            GROUP BY 1, 2, 3
            """,
            [tenant_id, start, end],
        )
        return {(meter, provider, model): quantity for meter, provider, model, quantity in cursor.fetchall()}


def active_agent_ids(tenant_id: int, start: datetime, end: datetime) -> list[int]:
    """Agents that reported any usage in [start, end)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT agent_id FROM usage_usagerollup WHERE tenant_id = %s AND hour >= %s AND hour < %s ORDER BY 1",
            [tenant_id, start, end],
        )
        return [row[0] for row in cursor.fetchall()]


GROUPINGS = {
    "meter": "meter",
    "provider": "provider",
    "model": "model",
    "agent": "agent_id",
    "session": "session_id",
    "day": "(date_trunc('day', hour AT TIME ZONE %(tz)s))::date",
    "hour": "hour",
}
FILTERS = {
    "meter": "meter",
    "provider": "provider",
    "model": "model",
    "agent": "agent_id",
    "session": "session_id",
}


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
    keys = list(dict.fromkeys([*group_by, "meter", "provider", "model"]))
    unknown = set(keys) - GROUPINGS.keys() | set(filters or {}) - FILTERS.keys()
    if unknown:
        raise ValueError(f"unknown grouping or filter: {sorted(unknown)}")
    select = ", ".join(f"{GROUPINGS[k]} AS {k}" for k in keys)
    where = ["tenant_id = %(tenant)s", "hour >= %(start)s", "hour < %(end)s"]
    params: dict = {"tenant": tenant_id, "start": start, "end": end, "tz": tz}
    for name, value in (filters or {}).items():
        where.append(f"{FILTERS[name]} = %(f_{name})s")
        params[f"f_{name}"] = value
    sql = (
        f"SELECT {select}, sum(quantity) AS quantity, sum(event_count) AS events FROM usage_usagerollup "  # noqa: S608 - identifiers come from the whitelists above
        f"WHERE {' AND '.join(where)} GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))} "
        f"ORDER BY {', '.join(str(i + 1) for i in range(len(keys)))}"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [c.name for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def iter_usage_rows(tenant_id: int, tz: str, start: datetime, end: datetime, filters: dict | None = None):
    """Hourly rollup rows for CSV export, streamed from a server-side cursor (bounded memory)."""
    from django.db import transaction

    where = ["tenant_id = %(tenant)s", "hour >= %(start)s", "hour < %(end)s"]
    params: dict = {"tenant": tenant_id, "start": start, "end": end}
    for name, value in (filters or {}).items():
        where.append(f"{FILTERS[name]} = %(f_{name})s")
        params[f"f_{name}"] = value
    sql = (
        "SELECT hour, agent_id, session_id, meter, provider, model, quantity, event_count "  # noqa: S608 - whitelisted
        f"FROM usage_usagerollup WHERE {' AND '.join(where)} ORDER BY hour, agent_id, session_id, meter, provider, model"
    )
    with transaction.atomic(), connection.connection.cursor(name="usage_export") as cursor:
        cursor.itersize = 2000
        cursor.execute(sql, params)
        yield from cursor
