"""GET /api/v1/usage: the key's tenant's usage quantities and allocated cost over a range of days.

The key's scope is its tenant. Costs are allocated at each period's average unit prices
(billing.selectors), exactly as the portal shows them.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import DATE_SCHEMA, DecimalTextField, QueryDateField, SentEmptyIsAValue
from api.problems import error_responses
from billing import periods
from billing import selectors as billing_selectors

GROUPS = ("meter", "model", "provider", "agent", "session", "day")
MAX_DAYS = 400


class GroupByField(SentEmptyIsAValue, serializers.CharField):
    pass


class UsageQuery(serializers.Serializer):
    start = QueryDateField(required=False)
    end = QueryDateField(required=False)
    group_by = GroupByField(required=False, default="meter", trim_whitespace=False)
    after = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, max_length=1000)

    def validate_group_by(self, value: str) -> list[str]:
        groups = value.split(",")
        if not set(groups) <= set(GROUPS) or len(set(groups)) != len(groups):
            raise serializers.ValidationError(f"Use a comma-separated list of distinct {', '.join(GROUPS)}.")
        return groups


class UsageRowSerializer(serializers.Serializer):
    group = serializers.DictField(
        child=serializers.CharField(allow_null=True),
        help_text="The row's value of each grouping (a day as YYYY-MM-DD; the agent's name).",
    )
    quantity = serializers.DictField(child=DecimalTextField(), help_text="Meter code → quantity.")
    cost = DecimalTextField(
        help_text="Of the priced part of the quantities only, to 6 decimal places. Grouped by session: each "
        "call's own cost (as GET /sessions/{id} gives it, fixed when its usage arrived); otherwise the period's "
        "invoice allocated at each month's average unit prices."
    )
    unpriced = serializers.DictField(
        child=DecimalTextField(),
        help_text="Meter code → the part of quantity that no price of your plan matches: stored, not billed "
        "and not in cost until a price covers it. Empty when everything in the row is priced.",
    )


class UsageSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField(help_text="Exclusive.")
    currency = serializers.CharField()
    group_by = serializers.ListField(child=serializers.ChoiceField(choices=GROUPS))
    results = UsageRowSerializer(many=True)
    total_cost = DecimalTextField(help_text="Σ cost of the results (grouped by session: of this page's).")
    next = serializers.URLField(
        allow_null=True,
        help_text=f"Grouped by session, results come {billing_selectors.SESSIONS_PER_PAGE} sessions to a "
        "page, in session id order: the URL of the next page, null on the last (and when not grouped by session).",
    )


_DAY = f"A tenant-local date (YYYY-MM-DD) from {periods.FIRST_QUERY_DAY} to {periods.LAST_QUERY_DAY}"


class UsageReadView(APIView):
    @extend_schema(
        operation_id="usage_read",
        parameters=[
            OpenApiParameter(
                "start", DATE_SCHEMA, description=f"{_DAY}; default: the current period's start."
            ),
            OpenApiParameter(
                "end",
                DATE_SCHEMA,
                description=f"{_DAY}, exclusive, at most {MAX_DAYS} days after start; "
                "default: the current period's end.",
            ),
            OpenApiParameter(
                "after",
                str,
                description="Grouped by session: the sessions after this session id (what `next` carries); "
                "absent: from the first.",
            ),
            OpenApiParameter(
                "group_by",
                {
                    "type": "array",
                    "items": {"type": "string", "enum": list(GROUPS)},
                    "minItems": 1,
                    "uniqueItems": True,
                },
                style="form",
                explode=False,
                description="Comma-separated, e.g. meter,model; default meter.",
            ),
        ],
        responses={200: UsageSerializer, **error_responses(400, 401, 429)},
        summary="Usage and cost of your tenant",
        description="Quantities per meter and their cost, grouped as you ask, over a range of days. Any agent "
        "key of the tenant reads the whole tenant's usage.",
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
        following = None
        if "session" in groups:
            page = billing_selectors.usage_by_sessions(
                tenant, start, end, groups, after=query.validated_data.get("after")
            )
            usage = page.groups
            if page.next_after is not None:
                params = request.query_params.copy()
                params["after"] = page.next_after
                following = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        else:
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
            cost = slot.cost.quantize(Decimal("0.000001"))
            results.append(
                {
                    "group": group,
                    "quantity": dict(sorted(slot.quantity.items())),
                    "cost": cost,
                    "unpriced": dict(sorted(slot.unpriced.items())),
                }
            )
        body = {
            "start": start,
            "end": end,
            "currency": tenant.currency,
            "group_by": groups,
            "results": results,
            "total_cost": sum((r["cost"] for r in results), Decimal(0)),
            "next": following,
        }
        return Response(UsageSerializer(body).data)
