from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Sum

from usage.models import AgentRollup, UsageEvent, UsageRollup


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def recent(minutes: int = 10) -> str:
    return iso(datetime.now(UTC) - timedelta(minutes=minutes))


def event(event_id: str = "e-1", **overrides) -> dict:
    body = {
        "id": event_id,
        "timestamp": recent(),
        "session_id": "call-1",
        "provider": "api.openai.com",
        "model": "gpt-4o-mini",
        "usage": {"llm_input_text_tokens": 1200, "llm_output_text_tokens": "85"},
    }
    body.update(overrides)
    return body


def totals(tenant, **filters) -> dict[tuple[str, str, str], Decimal]:
    """Rolled-up quantity per (meter, provider, model) for a tenant; checks that the per-session and the
    per-agent rollups agree unless the filter is by session."""
    found = []
    for model in (UsageRollup,) if "session_id" in filters else (UsageRollup, AgentRollup):
        rows = (
            model.objects.for_tenant(tenant)
            .filter(**filters)
            .values_list("meter", "provider", "model")
            .annotate(q=Sum("quantity"), n=Sum("event_count"))
        )
        found.append({(m, p, mo): (q.normalize(), n) for m, p, mo, q, n in rows})
    assert found[0] == found[-1], "usage_usagerollup and usage_agentrollup disagree"
    return {key: q for key, (q, _) in found[0].items()}


def stored_count(tenant=None) -> int:
    return (UsageEvent.objects.for_tenant(tenant) if tenant else UsageEvent.objects).count()
