"""Portal pages. Thin: resolve the tenant (portal.access), call selectors and services, render.

Every object is looked up from ``request.access.tenant``; another tenant's object is a 404 like a missing one.
"""

from __future__ import annotations

import csv
import html
from datetime import date, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, F, Max, Min, Sum
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from billing import budgets, periods
from billing import selectors as billing_selectors
from billing.models import Invoice
from portal import charts, pdf
from portal.access import SESSION_KEY, tenant_view
from portal.forms import AgentForm, ApiKeyForm, BudgetForm, MemberForm, RoleForm, UsageFilterForm
from portal.money import format_money, format_quantity
from tenants.keys import issue_key
from tenants.models import Agent, APIKey, Budget, BudgetAlert, Membership
from usage import rollups as usage_selectors
from usage.models import Session, UsageEvent, UsageRollup


def _activate(request) -> None:
    timezone.activate(request.access.tenant.timezone)


# --- dashboard ------------------------------------------------------------------------------------------------


@tenant_view()
def dashboard(request):
    _activate(request)
    tenant = request.access.tenant
    spend = billing_selectors.current_spend(tenant)
    fmt = lambda v: format_money(v, tenant.currency)  # noqa: E731
    today = timezone.localdate()
    # Every chart from one pass over the period's rollups (a large tenant has ~10⁵ rows a month).
    breakdowns, model_rows = billing_selectors.breakdowns(spend, ["day", "meter", "agent"])
    by_day = {row["key"]: row["cost"] for row in breakdowns["day"]}
    days = [spend.start + timedelta(days=n) for n in range(periods.days_between(spend.start, spend.end))]
    day_items = [(f"{d:%-d}", by_day.get(d, Decimal(0))) for d in days if d <= today]
    agents = dict(Agent.objects.for_tenant(tenant).values_list("pk", "name"))
    by_model: dict[str, Decimal] = {}
    for row in model_rows:
        label = f"{row['provider'] or '—'} / {row['model'] or '—'}"
        by_model[label] = by_model.get(label, Decimal(0)) + spend.cost_of(
            (row["meter"], row["provider"], row["model"]), row["quantity"]
        )
    context = {
        "spend": spend,
        "forecast": spend.forecast(),
        "budget": _budget_status(tenant, spend),
        "chart_by_day": charts.bar_chart(
            day_items, fmt, title="Spend by day", label_every=max(len(day_items) // 10, 1)
        ),
        "chart_by_meter": charts.share_chart(
            [(row["key"], row["cost"]) for row in breakdowns["meter"]],
            fmt,
            title="Spend by meter",
        ),
        "chart_by_model": charts.share_chart(list(by_model.items()), fmt, title="Spend by model"),
        "chart_by_agent": charts.share_chart(
            [(agents.get(row["key"], "?"), row["cost"]) for row in breakdowns["agent"]],
            fmt,
            title="Spend by agent",
        ),
        "last_invoice": Invoice.objects.for_tenant(tenant).finalized().order_by("-period_start").first(),
        "unmatched": spend.priced.unmatched,
    }
    return render(request, "portal/dashboard.html", context)


def _budget_status(tenant, spend):
    return budgets.budget_status(tenant, spend)


# --- usage ----------------------------------------------------------------------------------------------------


def _usage_form(request):
    tenant = request.access.tenant
    start, end = billing_selectors.invoicing.current_period(tenant)
    form = UsageFilterForm(request.GET or None, tenant=tenant, default_start=start, default_end=end)
    if not request.GET:  # show what is displayed: the current period
        defaults = {
            "group_by": "meter",
            "start": start.isoformat(),
            "end": (end - timedelta(days=1)).isoformat(),
        }
        form = UsageFilterForm(defaults, tenant=tenant, default_start=start, default_end=end)
    return form


def _priced_rows(tenant, start: date, end: date, group_by: str, filters: dict) -> list[dict]:
    """Usage rows of [start, end) with cost allocated at each month's average unit prices."""
    rows: list[dict] = []
    month = periods.month_start(start)
    while month < end:
        spend = billing_selectors.spend(tenant, month, periods.next_month(month))
        lo, hi = max(start, month), min(end, periods.next_month(month))
        for row in usage_selectors.usage_rows(
            tenant.pk,
            tenant.timezone,
            periods.local_midnight(lo, tenant.timezone),
            periods.local_midnight(hi, tenant.timezone),
            [group_by],
            filters,
        ):
            row["cost"] = spend.cost_of((row["meter"], row["provider"], row["model"]), row["quantity"])
            rows.append(row)
        month = periods.next_month(month)
    return rows


@tenant_view()
def usage(request):
    _activate(request)
    tenant = request.access.tenant
    form = _usage_form(request)
    rows, totals, table = [], {}, ""
    if form.is_valid():
        data = form.cleaned_data
        group_by = data["group_by"]
        rows = _priced_rows(tenant, data["start"], data["end_exclusive"], group_by, form.filters())
        merged: dict = {}
        for row in rows:
            key = (
                row[group_by] if group_by not in ("meter", "model") else None,
                row["meter"],
                row["provider"],
                row["model"],
            )
            slot = merged.setdefault(key, {**row, "quantity": Decimal(0), "events": 0, "cost": Decimal(0)})
            slot["quantity"] += row["quantity"]
            slot["events"] += row["events"]
            slot["cost"] += row["cost"]
        rows = sorted(
            merged.values(), key=lambda r: (str(r.get(group_by)), r["meter"], r["provider"], r["model"])
        )
        totals = {"cost": sum((r["cost"] for r in rows), Decimal(0))}
        table = _usage_table(tenant, group_by, rows[:USAGE_TABLE_ROWS])
    query = request.GET.copy()
    return render(
        request,
        "portal/usage.html",
        {
            "form": form,
            "head": USAGE_HEADS.get(form.cleaned_data.get("group_by")) if form.is_valid() else None,
            "rows": bool(rows),
            "table": table,
            "truncated": len(rows) > USAGE_TABLE_ROWS,
            "totals": totals,
            "query": query.urlencode(),
        },
    )


USAGE_TABLE_ROWS = 2000
# The first column of the usage table, by grouping (meter and model rows need none: they are the table).
USAGE_HEADS = {"agent": "Agent", "session": "Session", "day": "Day"}


def _usage_table(tenant, group_by: str, rows: list[dict]) -> str:
    """The table body's HTML, every cell escaped here. A month by day is ~320 rows, and rendering them through
    the template engine (a lookup and an escape per cell) was most of that page's time."""
    agents = dict(Agent.objects.for_tenant(tenant).values_list("pk", "name")) if group_by == "agent" else {}
    currency, with_head = tenant.currency, group_by in USAGE_HEADS
    escape = html.escape  # plain str cells: the standard library's, six times faster than Django's wrapper
    lines = []
    for row in rows:
        key = row.get(group_by)
        if group_by == "session" and key:
            head = f'<a href="{escape(reverse("portal:session", args=[key]))}">{escape(key)}</a>'
        elif group_by == "agent":
            head = escape(agents.get(key, "—"))
        elif group_by == "day":
            head = f"{key:%a} {key.day} {key:%b}"  # as the date filter's "D j M"
        else:
            head = escape(key or "—")
        cells = [
            f"<td>{head}</td>" if with_head else "",
            f"<td><code>{escape(row['meter'])}</code></td>",
            f"<td>{escape(row['provider'] or '—')}</td><td>{escape(row['model'] or '—')}</td>",
            f'<td class="num">{escape(format_quantity(row["quantity"]))}</td>',
            f'<td class="num">{escape(format_quantity(row["events"]))}</td>',
            f'<td class="num">{escape(format_money(row["cost"], currency))}</td>',
        ]
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return mark_safe("\n".join(lines))  # noqa: S308 - every cell is escaped above


class _Echo:
    def write(self, value):
        return value


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    # Spreadsheets run cells that start like a formula; a leading quote keeps them text (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@tenant_view()
def usage_csv(request):
    tenant = request.access.tenant
    form = _usage_form(request)
    if not form.is_valid():
        return HttpResponse(
            "Invalid filters: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items()),
            status=400,
            content_type="text/plain",
        )
    data = form.cleaned_data
    tz = ZoneInfo(tenant.timezone)
    agents = dict(Agent.objects.for_tenant(tenant).values_list("pk", "name"))
    writer = csv.writer(_Echo())
    rows = usage_selectors.iter_usage_rows(
        tenant.pk,
        periods.local_midnight(data["start"], tenant.timezone),
        periods.local_midnight(data["end_exclusive"], tenant.timezone),
        form.filters(),
    )

    def stream():
        yield writer.writerow(
            ["hour_start", "agent", "session_id", "meter", "provider", "model", "quantity", "events"]
        )
        for hour, agent_id, session_id, meter, provider, model, quantity, events in rows:
            yield writer.writerow(
                [
                    _csv_cell(v)
                    for v in (
                        hour.astimezone(tz).isoformat(),
                        agents.get(agent_id, agent_id),
                        session_id,
                        meter,
                        provider,
                        model,
                        format(quantity.normalize(), "f"),
                        events,
                    )
                ]
            )

    response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{tenant.slug}-{data["start"]}.csv"'
    return response


# --- sessions ---------------------------------------------------------------------------------------------------


@tenant_view()
def sessions(request):
    _activate(request)
    tenant = request.access.tenant
    ordered = (
        Session.objects.for_tenant(tenant)
        .select_related("agent")
        .order_by(F("started_at").desc(nulls_last=True), "-created_at")
    )
    page = Paginator(ordered, 50).get_page(request.GET.get("page"))
    costs = _session_costs(tenant, [s.session_id for s in page])
    for session in page:
        session.cost = costs.get(session.session_id, Decimal(0))
    return render(request, "portal/sessions.html", {"page": page})


def _session_costs(tenant, session_ids: list[str]) -> dict[str, Decimal]:
    if not session_ids:
        return {}
    costs: dict[str, Decimal] = {}
    rollups = (
        UsageRollup.objects.for_tenant(tenant)
        .filter(session_id__in=session_ids)
        .values("session_id", "meter", "provider", "model")
        .annotate(start=Min("hour"))
    )
    spends: dict[date, billing_selectors.Spend] = {}
    for row in rollups.annotate(quantity=Sum("quantity")):
        month, _ = periods.period_containing(row["start"], tenant.timezone)
        if month not in spends:
            spends[month] = billing_selectors.spend(tenant, month, periods.next_month(month))
        costs[row["session_id"]] = costs.get(row["session_id"], Decimal(0)) + spends[month].cost_of(
            (row["meter"], row["provider"], row["model"]), row["quantity"]
        )
    return costs


@tenant_view()
def session_detail(request, session_id: str):
    _activate(request)
    tenant = request.access.tenant
    session = get_object_or_404(
        Session.objects.for_tenant(tenant).select_related("agent"), session_id=session_id
    )
    events = UsageEvent.objects.for_tenant(tenant).filter(session_id=session_id).order_by("timestamp")
    span = events.aggregate(first=Min("timestamp"), last=Max("timestamp"), count=Count("id"))
    rows = []
    if span["first"]:
        month, _ = periods.period_containing(span["first"], tenant.timezone)
        spend = billing_selectors.spend(tenant, month, periods.next_month(month))
        rows = usage_selectors.usage_rows(
            tenant.pk,
            tenant.timezone,
            span["first"] - timedelta(hours=1),
            span["last"] + timedelta(hours=1),
            [],
            {"session": session_id},
        )
        for row in rows:
            row["cost"] = spend.cost_of((row["meter"], row["provider"], row["model"]), row["quantity"])
    return render(
        request,
        "portal/session_detail.html",
        {
            "session": session,
            "events": events[:500],
            "span": span,
            "rows": rows,
            "cost": sum((r["cost"] for r in rows), Decimal(0)),
        },
    )


# --- invoices ---------------------------------------------------------------------------------------------------


@tenant_view()
def invoices(request):
    _activate(request)
    return render(
        request, "portal/invoices.html", {"invoices": billing_selectors.invoices_for(request.access.tenant)}
    )


def _invoice(request, pk: int) -> Invoice:
    return get_object_or_404(Invoice.objects.for_tenant(request.access.tenant), pk=pk)


@tenant_view()
def invoice_detail(request, pk: int):
    _activate(request)
    invoice = _invoice(request, pk)
    return render(request, "portal/invoice_detail.html", {"invoice": invoice, "lines": invoice.lines.all()})


@tenant_view()
def invoice_print(request, pk: int):
    _activate(request)
    invoice = _invoice(request, pk)
    return render(request, "portal/invoice_print.html", {"invoice": invoice, "lines": invoice.lines.all()})


@tenant_view()
def invoice_pdf(request, pk: int):
    invoice = _invoice(request, pk)
    response = HttpResponse(pdf.render_invoice(invoice), content_type="application/pdf")
    response["Content-Disposition"] = (
        f'inline; filename="{invoice.number or "draft-" + str(invoice.period_start)}.pdf"'
    )
    response["Cache-Control"] = "private, no-store"
    return response


# --- agents and keys --------------------------------------------------------------------------------------------


@tenant_view()
def agents(request):
    _activate(request)
    tenant = request.access.tenant
    agent_list = Agent.objects.for_tenant(tenant).prefetch_related("api_keys")
    return render(
        request,
        "portal/agents.html",
        {
            "agents": agent_list,
            "key_form": ApiKeyForm(tenant=tenant),
            "agent_form": AgentForm(tenant=tenant),
            "new_key": request.session.pop("portal_new_key", None),
        },
    )


@require_POST
@tenant_view(manage=True)
def agent_create(request):
    form = AgentForm(request.POST, tenant=request.access.tenant)
    if form.is_valid():
        form.save()
        messages.success(request, f"Agent {form.instance.name} created.")
    else:
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
    return redirect("portal:agents")


@require_POST
@tenant_view(manage=True)
def key_create(request):
    form = ApiKeyForm(request.POST, tenant=request.access.tenant)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("portal:agents")
    issued = issue_key(
        form.cleaned_data["agent"],
        label=form.cleaned_data["label"],
        expires_at=form.cleaned_data["expires_at"],
    )
    # Shown once, on the next page view, then gone from the session.
    request.session["portal_new_key"] = {"agent": issued.api_key.agent.name, "key": issued.plaintext}
    return redirect("portal:agents")


@require_POST
@tenant_view(manage=True)
def key_revoke(request, pk: int):
    key = get_object_or_404(APIKey.objects.for_tenant(request.access.tenant), pk=pk)
    if key.revoked_at is None:
        APIKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        messages.success(request, f"Key {key.key_id} revoked; it is refused from the next request on.")
    return redirect("portal:agents")


# --- team -------------------------------------------------------------------------------------------------------


@tenant_view()
def team(request):
    members = (
        Membership.objects.for_tenant(request.access.tenant).select_related("user").order_by("user__username")
    )
    return render(
        request,
        "portal/team.html",
        {"members": members, "form": MemberForm(), "roles": Membership.Role.choices},
    )


@require_POST
@tenant_view(owner=True)
def member_add(request):
    from django.contrib.auth import get_user_model

    form = MemberForm(request.POST)
    if form.is_valid():
        user = get_user_model().objects.filter(email__iexact=form.cleaned_data["email"]).first()
        _, created = Membership.objects.get_or_create(
            user=user, tenant=request.access.tenant, defaults={"role": form.cleaned_data["role"]}
        )
        messages.success(request, f"{user.email} {'added' if created else 'is already a member'}.")
    else:
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
    return redirect("portal:team")


def _other_owners(membership) -> bool:
    return (
        Membership.objects.for_tenant(membership.tenant)
        .filter(role=Membership.Role.OWNER)
        .exclude(pk=membership.pk)
        .exists()
    )


@require_POST
@tenant_view(owner=True)
def member_role(request, pk: int):
    membership = get_object_or_404(Membership.objects.for_tenant(request.access.tenant), pk=pk)
    form = RoleForm(request.POST)
    if form.is_valid():
        if (
            membership.role == Membership.Role.OWNER
            and form.cleaned_data["role"] != "owner"
            and not _other_owners(membership)
        ):
            messages.error(request, "A tenant keeps at least one owner.")
        else:
            Membership.objects.filter(pk=membership.pk).update(role=form.cleaned_data["role"])
            messages.success(request, "Role changed.")
    return redirect("portal:team")


@require_POST
@tenant_view(owner=True)
def member_remove(request, pk: int):
    membership = get_object_or_404(Membership.objects.for_tenant(request.access.tenant), pk=pk)
    if membership.role == Membership.Role.OWNER and not _other_owners(membership):
        messages.error(request, "A tenant keeps at least one owner.")
    else:
        membership.delete()
        messages.success(request, "Member removed.")
    return redirect("portal:team")


# --- tenant switcher ----------------------------------------------------------------------------------------------


@require_POST
@tenant_view()
def switch_tenant(request):
    try:
        wanted = int(request.POST.get("tenant", ""))
    except ValueError:
        raise Http404 from None
    if not any(m.tenant_id == wanted for m in request.access.memberships):
        raise Http404
    request.session[SESSION_KEY] = wanted
    return redirect("portal:dashboard")


# --- budget -----------------------------------------------------------------------------------------------------


@tenant_view()
def budget(request):
    _activate(request)
    tenant = request.access.tenant
    current = Budget.objects.filter(tenant=tenant).first()
    if request.method == "POST":
        if not request.access.can_manage:
            raise PermissionDenied("Only owners and admins change the budget.")
        form = BudgetForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            budgets.save_budget(
                tenant, data["monthly_amount"], data["thresholds"], data["alert_email"], data["webhook_url"]
            )
            messages.success(request, "Budget saved.")
            return redirect("portal:budget")
    else:
        initial = {"thresholds": [50, 80, 100]}
        if current:
            initial = {
                "monthly_amount": current.monthly_amount,
                "thresholds": current.thresholds,
                "alert_email": current.alert_email,
                "webhook_url": current.webhook_url,
            }
        form = BudgetForm(initial=initial)
    return render(
        request,
        "portal/budget.html",
        {
            "form": form,
            "budget": current,
            "status": budgets.budget_status(tenant),
            "alerts": BudgetAlert.objects.for_tenant(tenant)[:20],
        },
    )
