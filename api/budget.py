"""GET /api/v1/budget: period-to-date spend and forecast against the tenant's budget."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import DecimalTextField
from api.problems import error_responses
from billing import selectors as billing_selectors
from spend import budgets


class BudgetSerializer(serializers.Serializer):
    currency = serializers.CharField()
    period_start = serializers.DateField()
    period_end = serializers.DateField(help_text="Exclusive.")
    spend = DecimalTextField(help_text="Spend so far this period.")
    forecast = DecimalTextField(help_text="The period's spend if usage goes on at the pace so far.")
    budget = DecimalTextField(
        allow_null=True, help_text="The tenant's monthly budget; null when none is set."
    )
    remaining = DecimalTextField(allow_null=True)
    percent_used = DecimalTextField(allow_null=True)
    thresholds_crossed = serializers.ListField(
        child=serializers.IntegerField(), help_text="The alert thresholds (percent) spend has reached."
    )


class BudgetReadView(APIView):
    @extend_schema(
        operation_id="budget_read",
        responses={200: BudgetSerializer, **error_responses(401, 429)},
        summary="Spend against your tenant's budget",
        description="Period-to-date spend and forecast, against the budget if one is set: an agent can check "
        "it before starting a call.",
    )
    def get(self, request: Request) -> Response:
        tenant = request.user.tenant
        spend = billing_selectors.current_spend(tenant)
        status = budgets.budget_status(tenant, spend)
        body = {
            "currency": tenant.currency,
            "period_start": spend.start,
            "period_end": spend.end,
            "spend": spend.total,
            "forecast": spend.forecast().quantize(Decimal("0.01")),
            "budget": status.amount if status else None,
            "remaining": status.remaining if status else None,
            "percent_used": status.percent_used if status else None,
            "thresholds_crossed": status.crossed if status else [],
        }
        return Response(BudgetSerializer(body).data)
