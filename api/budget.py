"""GET /api/v1/budget: period-to-date spend and forecast against the tenant's budget."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import decimal_text
from billing import selectors as billing_selectors
from spend import budgets


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
                "spend": decimal_text(spend.total),
                "forecast": decimal_text(spend.forecast().quantize(Decimal("0.01"))),
                "budget": decimal_text(status.amount) if status else None,
                "remaining": decimal_text(status.remaining) if status else None,
                "percent_used": str(status.percent_used) if status else None,
                "thresholds_crossed": status.crossed if status else [],
            }
        )
