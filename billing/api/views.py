"""Read API for agent keys (DESIGN §4): usage with priced cost, one session's usage and cost, the budget.

The key's scope is its tenant; usage can be narrowed with filters. Costs are allocated at the period's
average unit prices (billing.selectors), exactly as the portal shows them.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Max, Min
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import budgets, periods
from billing import selectors as billing_selectors
from usage import rollups as usage_selectors
from usage.api import views as usage_views
from usage.models import Session, UsageEvent

GROUPS = ("meter", "model", "provider", "agent", "session", "day")
MAX_DAYS = 400


class UsageQuery(serializers.Serializer):
    start = serializers.DateField(
        required=False, help_text="Tenant-local date; default: start of the current period."
    )
    end = serializers.DateField(
        required=False, help_text="Tenant-local date, exclusive; default: end of the period."
    )
    group_by = serializers.CharField(
        required=False, default="meter", help_text=f"Comma-separated: {', '.join(GROUPS)}."
    )

    def validate_group_by(self, value: str) -> list[str]:
        groups = [g.strip() for g in value.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            raise serializers.ValidationError(f"Use any of {', '.join(GROUPS)}.")
        return groups


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


class UsageReadView(APIView):
    @extend_schema(
        operation_id="usage_read",
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE),
            OpenApiParameter("end", OpenApiTypes.DATE),
            OpenApiParameter("group_by", OpenApiTypes.STR),
        ],
        responses={200: OpenApiTypes.OBJECT},
        summary="Usage quantities and priced cost of the key's tenant",
    )
    def get(self, request: Request) -> Response:
        tenant = request.user.tenant
        query = UsageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        default_start, default_end = billing_selectors.invoicing.current_period(tenant)
        start = query.validated_data.get("start") or default_start
        end = query.validated_data.get("end") or default_end
        if end <= start or (end - start).days > MAX_DAYS:
            raise serializers.ValidationError(
                {"end": [f"must be after start and within {MAX_DAYS} days of it"]}
            )
        groups = query.validated_data["group_by"]
        sql_groups = [g for g in groups if g not in ("meter", "provider", "model")]
        merged: dict[tuple, dict] = {}
        month = periods.month_start(start)
        while month < end:
            spend = billing_selectors.spend(tenant, month, periods.next_month(month))
            lo, hi = max(start, month), min(end, periods.next_month(month))
            rows = usage_selectors.usage_rows(
                tenant.pk,
                tenant.timezone,
                periods.local_midnight(lo, tenant.timezone),
                periods.local_midnight(hi, tenant.timezone),
                sql_groups,
            )
            for row in rows:
                key = tuple(row[g] for g in groups)
                slot = merged.setdefault(key, {"quantity": {}, "cost": Decimal(0)})
                slot["quantity"][row["meter"]] = (
                    slot["quantity"].get(row["meter"], Decimal(0)) + row["quantity"]
                )
                slot["cost"] += spend.cost_of((row["meter"], row["provider"], row["model"]), row["quantity"])
            month = periods.next_month(month)
        agents = dict(tenant.agents.values_list("pk", "name"))
        results = []
        for key, slot in sorted(merged.items(), key=lambda item: tuple(str(k) for k in item[0])):
            group = {}
            for name, value in zip(groups, key, strict=True):
                group[name] = (
                    agents.get(value)
                    if name == "agent"
                    else (value.isoformat() if isinstance(value, date) else value)
                )
            results.append(
                {
                    "group": group,
                    "quantity": {m: _decimal(q) for m, q in sorted(slot["quantity"].items())},
                    "cost": _decimal(slot["cost"].quantize(Decimal("0.000001"))),
                }
            )
        return Response(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "currency": tenant.currency,
                "group_by": groups,
                "results": results,
                "total_cost": _decimal(sum((Decimal(r["cost"]) for r in results), Decimal(0))),
            }
        )


class SessionView(usage_views.SessionView):
    """``/api/v1/sessions/{id}``: PUT (usage.api) and GET with priced cost (needs billing, so it lives here)."""

    @extend_schema(
        operation_id="sessions_read",
        responses={200: OpenApiTypes.OBJECT},
        summary="Usage and cost of one conversation",
    )
    def get(self, request: Request, session_id: str) -> Response:
        tenant = request.user.tenant
        session = (
            Session.objects.for_tenant(tenant).filter(session_id=session_id).select_related("agent").first()
        )
        if session is None:
            raise Http404
        span = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(session_id=session_id)
            .aggregate(first=Min("timestamp"), last=Max("timestamp"))
        )
        usage, cost = [], Decimal(0)
        if span["first"]:
            month, _ = periods.period_containing(span["first"], tenant.timezone)
            spend = billing_selectors.spend(tenant, month, periods.next_month(month))
            for row in usage_selectors.usage_rows(
                tenant.pk,
                tenant.timezone,
                span["first"] - timedelta(hours=1),
                span["last"] + timedelta(hours=1),
                [],
                {"session": session_id},
            ):
                row_cost = spend.cost_of((row["meter"], row["provider"], row["model"]), row["quantity"])
                cost += row_cost
                usage.append(
                    {
                        "meter": row["meter"],
                        "provider": row["provider"],
                        "model": row["model"],
                        "quantity": _decimal(row["quantity"]),
                        "cost": _decimal(row_cost.quantize(Decimal("0.000001"))),
                    }
                )
        return Response(
            {
                "session_id": session.session_id,
                "agent": session.agent.name,
                "started_at": session.started_at,
                "ended_at": session.ended_at,
                "end_user_id": session.end_user_id,
                "currency": tenant.currency,
                "usage": usage,
                "cost": _decimal(cost.quantize(Decimal("0.000001"))),
            }
        )


class BudgetReadView(APIView):
    @extend_schema(
        operation_id="budget_read",
        responses={200: OpenApiTypes.OBJECT},
        summary="Period-to-date spend against the tenant's budget",
    )
    def get(self, request: Request) -> Response:
        tenant = request.user.tenant
        spend = billing_selectors.current_spend(tenant)
        status = budgets.budget_status(tenant, spend)
        return Response(
            {
                "currency": tenant.currency,
                "period_start": spend.start.isoformat(),
                "period_end": spend.end.isoformat(),
                "spend": _decimal(spend.total),
                "forecast": _decimal(spend.forecast().quantize(Decimal("0.01"))),
                "budget": _decimal(status.amount) if status else None,
                "remaining": _decimal(status.remaining) if status else None,
                "percent_used": str(status.percent_used) if status else None,
                "thresholds_crossed": status.crossed if status else [],
            }
        )
