"""The session list (50 to a page, each with its cost) and one session's usage, cost and events."""

from __future__ import annotations

from decimal import Decimal

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from billing import selectors as billing_selectors
from portal.access import activate_tenant_timezone, tenant_view
from usage import gaps
from usage.models import START, Session, UsageEvent, meter_names


@tenant_view()
def sessions(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    ordered = (
        Session.objects.for_tenant(tenant)
        .select_related("agent")
        .order_by(START.desc(nulls_last=True), "-created_at")  # the index session_tenant_start
    )
    page = Paginator(ordered, 50).get_page(request.GET.get("page"))
    costs = billing_selectors.session_costs(tenant, [s.session_id for s in page])
    for session in page:
        session.cost = costs.get(session.session_id, Decimal(0))
    return render(request, "portal/sessions.html", {"page": page})


@tenant_view()
def session_detail(request, session_id: str):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    session = get_object_or_404(
        Session.objects.for_tenant(tenant).select_related("agent"), session_id=session_id
    )
    # every event as sent, retracted ones too (marked: usage.corrections); the counts and cost are of the others
    events = (
        UsageEvent.objects.for_tenant(tenant).filter(session_id=session_id).order_by("timestamp", "event_id")
    )
    cost = billing_selectors.session_cost(tenant, session_id)
    return render(
        request,
        "portal/session_detail.html",
        {
            "session": session,
            "events": events[:500],
            "event_count": cost.event_count,
            "retracted_count": events.filter(retracted_at__isnull=False).count(),
            "rows": cost.rows,
            "cost": cost.total,
            "provider_cost": cost.provider_cost,
            "margin": cost.total - cost.provider_cost,
            "uncosted": cost.uncosted,
            "unpriced": any(row["unpriced"] for row in cost.rows),
            "gaps": gaps.session_gaps(tenant.pk, session_id),
            "audio_checks": gaps.audio_check(tenant.pk, session),
            "meter_names": meter_names(),
        },
    )
