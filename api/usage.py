"""GET /api/v1/usage: the key's tenant's usage quantities and allocated cost over a range of days.

The key's scope is its tenant. Costs are allocated at each period's average unit prices
(billing.selectors), exactly as the portal shows them.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import decimal_text
from billing import selectors as billing_selectors

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
        usage = billing_selectors.usage_by_groups(tenant, start, end, groups)
        agents = dict(tenant.agents.values_list("pk", "name"))
        results = []
        for key, slot in sorted(usage.items(), key=lambda item: tuple(str(k) for k in item[0])):
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
                    "quantity": {m: decimal_text(q) for m, q in sorted(slot.quantity.items())},
                    "cost": decimal_text(slot.cost.quantize(Decimal("0.000001"))),
                }
            )
        return Response(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "currency": tenant.currency,
                "group_by": groups,
                "results": results,
                "total_cost": decimal_text(sum((Decimal(r["cost"]) for r in results), Decimal(0))),
            }
        )
