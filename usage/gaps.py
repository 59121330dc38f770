"""Where a provider's token details do not add up to its totals (issue 17 part 3).

``usage.meters`` bills what the details leave unclassified as text and records each gap on the stored event,
as ``gap_<kind>`` keys of its metadata (``usage.livekit``): ``unclassified_input_tokens`` (input total above the
sum of its text, audio and image details), ``unclassified_cached_tokens``, ``unclassified_output_tokens``,
``input_details_exceed_total`` / ``output_details_exceed_total`` (details above the total: the total is
billed), ``negative_<meter>`` (a cached figure above its modality) and ``unbilled_output_image_tokens``.
This module adds them up per model for one session. Only LiveKit-sourced events are read: an agent may put any
key in the metadata of ``POST /events``, and a value that is not a number is skipped, never an error.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import connection

_SQL = r"""
SELECT e.provider, e.model, substr(g.key, 5) AS kind, sum(g.value::numeric), count(*)
FROM usage_usageevent e CROSS JOIN LATERAL jsonb_each_text(e.metadata) AS g
WHERE e.tenant_id = %(tenant)s AND e.session_id = %(session)s
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
