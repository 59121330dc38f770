"""The dashboard: the period's spend, forecast, budget and charts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.shortcuts import render
from django.utils import timezone

from billing import call_costs, periods
from billing import selectors as billing_selectors
from billing.models import Invoice
from billing.money import format_money
from portal import charts
from portal.access import activate_tenant_timezone, tenant_view
from spend import budgets
from tenants.models import Agent
from usage.models import meter_names

# Why a group has no price, as the dashboard says it (billing.period_pricing's unmatched reasons).
UNPRICED_REASONS = {
    "no_price": "no price in your plan matches it",
    "no_provider_rate": "its price is the provider's cost plus a markup, and that cost is not known",
    "no_plan_version": "your plan had no version in force yet",
    "no_subscription": "no plan was in force on those days",
}


def unpriced_groups(unmatched: list[dict]) -> list[dict]:
    """The period's unpriced usage, one row per (meter, provider, model, reason), quantities added up over the
    period's plan segments."""
    groups: dict[tuple, Decimal] = {}
    for entry in unmatched:
        key = (entry["meter"], entry["provider"], entry["model"], entry["reason"])
        groups[key] = groups.get(key, Decimal(0)) + Decimal(entry["quantity"])
    return [
        {"meter": m, "provider": p, "model": mo, "quantity": q, "why": UNPRICED_REASONS.get(r, r)}
        for (m, p, mo, r), q in sorted(groups.items())
    ]


@tenant_view()
def dashboard(request):
    activate_tenant_timezone(request)
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
    names = meter_names()
    context = {
        "meter_names": names,
        "spend": spend,
        "forecast": None if spend.forecast_is_early() else spend.forecast(),
        "forecast_days": spend.days_so_far(),
        "forecast_min_days": billing_selectors.FORECAST_MIN_DAYS,
        "period_days": periods.days_between(spend.start, spend.end),
        "budget": budgets.budget_status(tenant, spend),
        "chart_by_day": charts.bar_chart(
            day_items, fmt, title="Spend by day", label_every=max(len(day_items) // 10, 1)
        ),
        "chart_by_meter": charts.share_chart(
            [(names.get(row["key"], row["key"]), row["cost"]) for row in breakdowns["meter"]],
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
        "unpriced": unpriced_groups(spend.priced.unmatched),
        "reconciliation": call_costs.reconcile(tenant, spend.start, spend.priced),
    }
    return render(request, "portal/dashboard.html", context)
