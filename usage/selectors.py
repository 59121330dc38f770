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
