"""PUT and GET /api/v1/sessions/{id}: create or update a conversation, read its usage and priced cost."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import FlatMetadataField, RFC3339Field, StorableCharField, decimal_text
from api.problems import PROBLEM, problem_response
from billing import selectors as billing_selectors
from usage import validation
from usage.models import Session


class SessionUpsertSerializer(serializers.Serializer):
    started_at = RFC3339Field(required=False, allow_null=True)
    ended_at = RFC3339Field(required=False, allow_null=True)
    end_user_id = StorableCharField(required=False, allow_blank=True, max_length=128)
    conversation_type = StorableCharField(required=False, allow_blank=True, max_length=64)
    metadata = FlatMetadataField(required=False)

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return attrs


class SessionSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    agent = serializers.CharField(source="agent.name")
    started_at = RFC3339Field()
    ended_at = RFC3339Field()
    end_user_id = serializers.CharField()
    conversation_type = serializers.CharField()
    metadata = serializers.JSONField()
    livekit_report_mode = serializers.CharField()


class SessionView(APIView):
    """``/api/v1/sessions/{id}``: PUT creates or updates a session; GET reads its usage and priced cost."""

    @extend_schema(
        operation_id="sessions_upsert",
        request=SessionUpsertSerializer,
        responses={200: SessionSerializer, 201: SessionSerializer, 400: PROBLEM},
        summary="Create or update a session (fields left out are kept)",
    )
    def put(self, request: Request, session_id: str) -> Response:
        principal = request.user
        if len(session_id) > 128 or validation.UNSTORABLE_RE.search(session_id):
            return problem_response(
                400,
                "Bad request",
                "Invalid session id.",
                [{"pointer": "/session_id", "detail": "must be 1–128 storable characters"}],
            )
        serializer = SessionUpsertSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with transaction.atomic():
            session, created = (
                Session.objects.for_tenant(principal.tenant)
                .select_for_update()
                .get_or_create(
                    session_id=session_id, defaults={"tenant": principal.tenant, "agent": principal.agent}
                )
            )
            for name, value in serializer.validated_data.items():
                setattr(session, name, value)
            if session.started_at and session.ended_at and session.ended_at < session.started_at:
                transaction.set_rollback(True)
                return problem_response(
                    400,
                    "Bad request",
                    "ended_at is before started_at; nothing was changed.",
                    [{"pointer": "/ended_at", "detail": "must not be before started_at"}],
                )
            session.updated_at = timezone.now()
            session.save()
        return Response(SessionSerializer(session).data, status=201 if created else 200)

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
        cost = billing_selectors.session_cost(tenant, session_id)
        return Response(
            {
                "session_id": session.session_id,
                "agent": session.agent.name,
                "started_at": session.started_at,
                "ended_at": session.ended_at,
                "end_user_id": session.end_user_id,
                "currency": tenant.currency,
                "usage": [
                    {
                        "meter": row["meter"],
                        "provider": row["provider"],
                        "model": row["model"],
                        "quantity": decimal_text(row["quantity"]),
                        "cost": decimal_text(row["cost"].quantize(Decimal("0.000001"))),
                    }
                    for row in cost.rows
                ],
                "cost": decimal_text(cost.total.quantize(Decimal("0.000001"))),
            }
        )
