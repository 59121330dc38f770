"""The dashboard: the period's spend, forecast, budget and charts."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.shortcuts import render
from django.utils import timezone

from billing import call_costs, periods
from billing import selectors as billing_selectors
from billing.models import Invoice, LedgerEntry
from billing.money import format_money
from portal import charts
from portal.access import activate_tenant_timezone, tenant_view
from portal.windows import Window, windows
from spend import budgets, control
from spend.models import SpendPolicy
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
    today = timezone.localdate()
    choices = windows(tenant, today)
    wanted = request.GET.get("period", "")
    window = next((w for w in choices if w.key == wanted), None)
    if window is None:
        return render(
            request,
            "portal/dashboard_bad_period.html",
            {"wanted": wanted, "choices": choices},
            status=400,
        )
    fmt = lambda v: format_money(v, tenant.currency)  # noqa: E731
    agents = dict(Agent.objects.for_tenant(tenant).values_list("pk", "name"))
    names = meter_names()
    if window.kind == "rolling":
        charts_data = _rolling(tenant, window, agents, names)
        context = {"total": charts_data.pop("total")}
    else:
        spend = billing_selectors.spend(tenant, window.start, window.end)
        charts_data = _period_charts(spend, window, today, agents, names)
        context = {
            "spend": spend,
            "reconciliation": call_costs.reconcile(tenant, window.start, spend.priced),
            "unpriced": unpriced_groups(spend.priced.unmatched),
        }
        if window.kind == "current":
            context["prepaid"] = _prepaid(tenant, spend)
            context.update(
                forecast=None if spend.forecast_is_early() else spend.forecast(),
                forecast_days=spend.days_so_far(),
                forecast_min_days=billing_selectors.FORECAST_MIN_DAYS,
                period_days=periods.days_between(spend.start, spend.end),
                budget=budgets.budget_status(tenant, spend),
            )
        else:
            context["period_invoice"] = (
                Invoice.objects.for_tenant(tenant)
                .filter(period_start=window.start)
                .exclude(status="void")
                .first()
            )
    day_items, by_meter, by_model, by_agent = (
        charts_data["days"],
        charts_data["meter"],
        charts_data["model"],
        charts_data["agent"],
    )
    context.update(
        window=window,
        choices=choices,
        meter_names=names,
        chart_by_day=charts.bar_chart(
            day_items, fmt, title="Spend by day", label_every=max(len(day_items) // 10, 1)
        ),
        chart_by_meter=charts.share_chart(by_meter, fmt, title="Spend by meter"),
        chart_by_model=charts.share_chart(by_model, fmt, title="Spend by model"),
        chart_by_agent=charts.share_chart(by_agent, fmt, title="Spend by agent"),
        last_invoice=Invoice.objects.for_tenant(tenant).finalized().order_by("-period_start").first(),
    )
    return render(request, "portal/dashboard.html", context)


def _prepaid(tenant, spend) -> dict | None:
    """The prepaid balance card: shown once a tenant is prepaid or has credit (decision 018)."""
    policy = control.policy_of(tenant)
    if policy.policy == SpendPolicy.Policy.POSTPAID and not LedgerEntry.objects.for_tenant(tenant).exists():
        return None
    balance = control.balance(tenant, current=spend.priced)  # the period the dashboard already priced
    return {"balance": balance, "burn": control.burn(tenant, spend.cost_of, balance.available)}


def _period_charts(spend, window: Window, today: date, agents: dict, names: dict) -> dict:
    # Every chart from one pass over the period's rollups (a large tenant has ~10⁵ rows a month).
    breakdowns, model_rows = billing_selectors.breakdowns(spend, ["day", "meter", "agent"])
    by_day = {row["key"]: row["cost"] for row in breakdowns["day"]}
    days = [spend.start + timedelta(days=n) for n in range(periods.days_between(spend.start, spend.end))]
    by_model: dict[str, Decimal] = {}
    for row in model_rows:
        label = f"{row['provider'] or '—'} / {row['model'] or '—'}"
        by_model[label] = by_model.get(label, Decimal(0)) + spend.cost_of(
            (row["meter"], row["provider"], row["model"]), row["quantity"]
        )
    return {
        "days": [
            (f"{d:%-d}", by_day.get(d, Decimal(0))) for d in days if window.kind == "past" or d <= today
        ],
        "meter": [(names.get(row["key"], row["key"]), row["cost"]) for row in breakdowns["meter"]],
        "model": list(by_model.items()),
        "agent": [(agents.get(row["key"], "?"), row["cost"]) for row in breakdowns["agent"]],
    }


def _rolling(tenant, window: Window, agents: dict, names: dict) -> dict:
    """The last 30 days from the rollups, each month's usage at that month's average unit prices (the usage
    explorer's numbers); fees belong to periods and are left out."""
    by_day, by_provider_model, by_meter, by_agent = billing_selectors.usage_by_group_sets(
        tenant, window.start, window.end, [["day"], ["provider", "model"], ["meter"], ["agent"]]
    )
    by_day = {key[0]: group.cost for key, group in by_day.items()}
    days = [window.start + timedelta(days=n) for n in range((window.end - window.start).days)]
    by_model: dict[str, Decimal] = {}
    for (provider, model), group in by_provider_model.items():
        label = f"{provider or '—'} / {model or '—'}"
        by_model[label] = by_model.get(label, Decimal(0)) + group.cost
    return {
        "days": [(f"{d:%-d %b}", by_day.get(d, Decimal(0))) for d in days],
        "meter": [(names.get(key[0], key[0]), group.cost) for key, group in by_meter.items()],
        "model": list(by_model.items()),
        "agent": [(agents.get(key[0], "?"), group.cost) for key, group in by_agent.items()],
        "total": sum((group.cost for group in by_meter.values()), Decimal(0)),
    }
