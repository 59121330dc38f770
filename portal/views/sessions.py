"""The session list (50 to a page, each with its cost) and one session's usage, cost and events."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.shortcuts import get_object_or_404, render

from billing import selectors as billing_selectors
from portal.access import activate_tenant_timezone, tenant_view
from usage import gaps
from usage.models import START, Session, UsageEvent, meter_names

SESSIONS_PER_PAGE = 50
# Pages are read by offset; past this one a page number is clamped (10⁶ sessions back, far beyond a person
# paging, and an offset PostgreSQL still skips in well under a second).
MAX_PAGE = 20_000


@dataclass
class SessionsPage:
    """A page of the list without a count of every session (10⁵ for a large tenant, counted on each request
    took most of the page's time): whether a next page exists is one more row read."""

    number: int
    object_list: list
    has_next: bool

    def __iter__(self):
        return iter(self.object_list)

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1


def _page_number(text: str | None) -> int:
    """``?page=`` as a page number; anything else (absent, not a number, below 1) is the first page."""
    try:
        return max(int(text or 1), 1)
    except ValueError:
        return 1


def _with_agent(tenant):
    """The tenant's sessions with their agent joined, the agent's tenant named too (decision 024)."""
    return Session.objects.for_tenant(tenant).filter(agent__tenant=tenant).select_related("agent")


@tenant_view()
def sessions(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    # the index session_tenant_start
    ordered = _with_agent(tenant).order_by(START.desc(nulls_last=True), "-created_at")
    number = min(_page_number(request.GET.get("page")), MAX_PAGE)
    offset = (number - 1) * SESSIONS_PER_PAGE
    found = list(ordered[offset : offset + SESSIONS_PER_PAGE + 1])
    page = SessionsPage(number, found[:SESSIONS_PER_PAGE], len(found) > SESSIONS_PER_PAGE)
    costs = billing_selectors.session_costs(tenant, [s.session_id for s in page])
    for session in page:
        session.cost = costs.get(session.session_id, Decimal(0))
    return render(request, "portal/sessions.html", {"page": page})


@tenant_view()
def session_detail(request, session_id: str):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    session = get_object_or_404(_with_agent(tenant), session_id=session_id)
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
