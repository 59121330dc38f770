"""GET /api/v1/balance and the pre-call authorizations (holds): POST /api/v1/authorizations, then
``/{id}/extend`` and ``/{id}/release`` (DESIGN §13, decision 018)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import ClosedSerializer, DecimalTextField, IdentifierField, RFC3339Field, decimal_text
from api.problems import error_responses, problem_response
from billing.pricing import currency_exponent, round_money
from spend import control
from spend import tasks as spend_tasks
from spend.models import Hold
from usage.models import Session

MAX_TTL_SECONDS = int(control.MAX_TTL.total_seconds())
DEFAULT_TTL_SECONDS = int(control.DEFAULT_TTL.total_seconds())


class BalanceSerializer(serializers.Serializer):
    currency = serializers.CharField()
    ledger_balance = DecimalTextField(
        help_text="Σ the credit ledger: grants in effect, less what was applied, expired or reversed."
    )
    unbilled_usage = DecimalTextField(
        help_text="What the periods not yet invoiced will charge, priced now as their invoices will (tiers, "
        "allowances, minimums and fees included); an accepted ingest batch is in it at once."
    )
    held = DecimalTextField(help_text="Active pre-call holds.")
    available = DecimalTextField(help_text="ledger_balance − unbilled_usage − held; may be negative.")
    policy = serializers.ChoiceField(choices=["postpaid", "prepaid-soft", "prepaid-hard"])


def _balance_body(balance: control.Balance) -> dict:
    return {
        "currency": balance.currency,
        "ledger_balance": balance.ledger_balance,
        "unbilled_usage": balance.unbilled_usage,
        "held": balance.held,
        "available": balance.available,
        "policy": balance.policy,
    }


class BalanceView(APIView):
    @extend_schema(
        operation_id="balance_read",
        responses={200: BalanceSerializer, **error_responses(401, 429)},
        summary="Your tenant's prepaid balance, in real time",
        description="The credit ledger, less what the periods not yet invoiced will charge and the active "
        "pre-call holds. A batch of usage the API accepted is in it at once.",
    )
    def get(self, request: Request) -> Response:
        return Response(BalanceSerializer(_balance_body(control.balance(request.user.tenant))).data)


class AuthorizationRequestSerializer(ClosedSerializer):
    session_id = IdentifierField(help_text="The call the hold is for.")
    amount = serializers.DecimalField(
        max_digits=18,
        decimal_places=4,
        min_value=Decimal("0.0001"),
        required=False,
        help_text="The amount to hold, in the tenant's currency. Send this or expected_seconds.",
    )
    expected_seconds = serializers.DecimalField(
        max_digits=12,
        decimal_places=3,
        min_value=Decimal(1),
        max_value=Decimal(MAX_TTL_SECONDS),
        required=False,
        help_text="The call's expected length: the server holds it at the tenant's own recent cost per second "
        "of session (its calls of the last 7 days), else its plan's expected cost per minute.",
    )
    ttl_seconds = serializers.IntegerField(
        min_value=60,
        max_value=MAX_TTL_SECONDS,
        default=DEFAULT_TTL_SECONDS,
        help_text="How long the hold lasts unless extended; it also ends when the session does.",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if not attrs.get("session_id"):
            raise serializers.ValidationError({"session_id": ["This field is required."]})
        if ("amount" in attrs) == ("expected_seconds" in attrs):
            raise serializers.ValidationError(
                {"amount": ["Send either amount or expected_seconds (not both)."]}
            )
        return attrs


class ExtendSerializer(ClosedSerializer):
    ttl_seconds = serializers.IntegerField(
        min_value=60, max_value=MAX_TTL_SECONDS, default=DEFAULT_TTL_SECONDS
    )
    amount = serializers.DecimalField(
        max_digits=18,
        decimal_places=4,
        min_value=Decimal("0.0001"),
        required=False,
        help_text="A new, higher amount to hold (checked like a new hold of the difference).",
    )


class ReleaseSerializer(ClosedSerializer):
    pass


class AuthorizationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    session_id = serializers.CharField()
    amount = DecimalTextField()
    currency = serializers.CharField()
    expires_at = RFC3339Field()
    released_at = RFC3339Field(allow_null=True)
    available = DecimalTextField(help_text="The available balance with this hold counted.")


def _body(hold: Hold, available: Decimal | None = None) -> dict:
    if available is None:
        available = control.balance(hold.tenant).available
    return {
        "id": hold.pk,
        "session_id": hold.session_id,
        "amount": hold.amount,
        "currency": hold.currency,
        "expires_at": hold.expires_at,
        "released_at": hold.released_at,
        "available": available,
    }


def _below_minor_unit(amount: Decimal | None, currency: str) -> Response | None:
    """The 400 for an amount with digits below the currency's smallest unit (None when it has none)."""
    if amount is None or round_money(amount, currency) == amount:
        return None
    return problem_response(
        400,
        "Bad request",
        "The request has invalid fields.",
        [{"pointer": "/amount", "detail": f"Has digits below the smallest unit of {currency}."}],
    )


def _refused(exc: control.Refused) -> Response:
    return problem_response(
        status.HTTP_402_PAYMENT_REQUIRED,
        "Insufficient balance",
        f"The tenant's prepaid balance does not cover this hold: {decimal_text(exc.required)} {exc.currency} "
        f"required, {decimal_text(exc.available)} {exc.currency} available. Top up, or ask for a smaller amount.",
        code="insufficient-balance",
        available=decimal_text(exc.available),
        required=decimal_text(exc.required),
        currency=exc.currency,
    )


class AuthorizationsView(APIView):
    @extend_schema(
        operation_id="authorizations_create",
        request=AuthorizationRequestSerializer,
        responses={
            201: AuthorizationSerializer,
            **error_responses(
                400,
                401,
                402,
                409,
                413,
                415,
                429,
                e402="Refused under the tenant's prepaid-hard policy: the "
                "body carries available and required.",
                e409="The session belongs to another agent.",
            ),
        },
        summary="Hold the expected cost of a call before it starts",
        description="Holds an amount, or the cost of an expected duration, against the available balance until "
        "the session ends (PUT /sessions/{id} with ended_at), the hold is released, or its time runs out. Under "
        "a prepaid-hard policy a hold the balance does not cover is refused with 402; usage is never refused.",
    )
    def post(self, request: Request) -> Response:
        tenant, agent = request.user.tenant, request.user.agent
        query = AuthorizationRequestSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        owner = (
            Session.objects.for_tenant(tenant)
            .filter(session_id=data["session_id"])
            .values_list("agent_id", flat=True)
            .first()
        )
        if owner is not None and owner != agent.pk:
            return problem_response(
                409,
                "Session of another agent",
                "This session belongs to another agent of your tenant.",
                [{"pointer": "/session_id", "detail": "belongs to another agent"}],
                code="session-of-another-agent",
            )
        if "amount" in data:
            amount = data["amount"]
            if refused := _below_minor_unit(amount, tenant.currency):
                return refused
        else:
            try:
                amount = control.amount_for(tenant, data["expected_seconds"])
            except control.NoRateForDuration as exc:
                return problem_response(
                    400, "Bad request", str(exc), [{"pointer": "/expected_seconds", "detail": str(exc)}]
                )
            if amount <= 0:  # a call too short to cost a minor unit still holds one
                amount = Decimal(1).scaleb(-currency_exponent(tenant.currency))
        try:
            hold, available = control.authorize(
                tenant, agent, data["session_id"], amount, timedelta(seconds=data["ttl_seconds"])
            )
        except control.Refused as exc:
            control.record_denial(tenant, agent, data["session_id"], exc)
            return _refused(exc)
        spend_tasks.queue_check(tenant)  # the hold lowered the available balance
        return Response(AuthorizationSerializer(_body(hold, available)).data, status=201)


_HOLD_ID = OpenApiParameter(
    "hold_id", int, OpenApiParameter.PATH, description="The id POST /authorizations answered with."
)


def _hold(request: Request, hold_id: int) -> Hold:
    hold = Hold.objects.for_tenant(request.user.tenant).filter(pk=hold_id).select_related("tenant").first()
    if hold is None:
        raise Http404
    return hold


class AuthorizationExtendView(APIView):
    @extend_schema(
        operation_id="authorizations_extend",
        parameters=[_HOLD_ID],
        request=ExtendSerializer,
        responses={
            200: AuthorizationSerializer,
            **error_responses(
                400,
                401,
                402,
                404,
                409,
                413,
                415,
                429,
                e409="The hold has ended (released, expired or its session ended).",
            ),
        },
        summary="Keep a hold while the call runs",
        description="Extends an active hold for ttl_seconds from now, optionally to a higher amount (checked as "
        "a new hold of the difference).",
    )
    def post(self, request: Request, hold_id: int) -> Response:
        hold = _hold(request, hold_id)
        query = ExtendSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        amount = data.get("amount")
        if refused := _below_minor_unit(amount, hold.currency):
            return refused
        try:
            hold, available = control.extend(hold, timedelta(seconds=data["ttl_seconds"]), amount)
        except control.HoldEnded:
            return problem_response(
                409,
                "Hold ended",
                "This hold was released, expired or its session ended; ask for a new one.",
                code="hold-ended",
            )
        except control.Refused as exc:
            return _refused(exc)
        return Response(AuthorizationSerializer(_body(hold, available)).data)


class AuthorizationReleaseView(APIView):
    @extend_schema(
        operation_id="authorizations_release",
        parameters=[_HOLD_ID],
        request=ReleaseSerializer,
        responses={200: AuthorizationSerializer, **error_responses(400, 401, 404, 413, 415, 429)},
        summary="End a hold (idempotent)",
        description="The held amount stops counting against the balance. Releasing an ended hold changes nothing.",
    )
    def post(self, request: Request, hold_id: int) -> Response:
        hold = _hold(request, hold_id)
        ReleaseSerializer(data=request.data if request.data else {}).is_valid(raise_exception=True)
        hold = control.release(hold)
        return Response(AuthorizationSerializer(_body(hold)).data)
