"""PUT and GET /api/v1/sessions/{id}: create or update a conversation, read its usage and priced cost."""

from __future__ import annotations

from django.db import transaction
from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.events import OTHER_AGENTS_SESSION
from api.fields import (
    ClosedSerializer,
    DecimalTextField,
    FlatMetadataField,
    IdentifierField,
    LabelField,
    RFC3339Field,
    described,
    identifier_schema,
)
from api.problems import error_responses, problem_response
from billing import selectors as billing_selectors
from billing.pricing import round_money
from spend import control
from usage import gaps, validation
from usage.ingest import DEFAULT_MODEL_KINDS
from usage.models import Session

_DEFAULT_MODELS_SCHEMA = {
    "type": "object",
    "properties": {
        kind: {
            "type": "object",
            "properties": {
                "provider": {"type": "string", "maxLength": 128},
                "model": {"type": "string", "maxLength": 128},
            },
            "required": ["provider", "model"],
            "additionalProperties": False,
        }
        for kind in DEFAULT_MODEL_KINDS
    },
    "additionalProperties": False,
}


@extend_schema_field(_DEFAULT_MODELS_SCHEMA)
class DefaultModelsField(serializers.Field):
    """``{"llm": {"provider", "model"}, "stt": …, "tts": …}``: any of the kinds, each with both names."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected an object keyed by llm, stt or tts.")
        errors: list[validation.FieldError] = []
        clean = {}
        for kind, names in data.items():
            if kind not in DEFAULT_MODEL_KINDS:
                errors.append(
                    validation.FieldError(f"/{kind}", f"must be one of {', '.join(DEFAULT_MODEL_KINDS)}")
                )
                continue
            if not isinstance(names, dict) or set(names) != {"provider", "model"}:
                errors.append(validation.FieldError(f"/{kind}", 'must be {"provider": "…", "model": "…"}'))
                continue
            provider = validation.text_field(names["provider"], f"/{kind}/provider", 128, errors)
            model = validation.text_field(names["model"], f"/{kind}/model", 128, errors)
            if not errors and not (provider and model):
                errors.append(validation.FieldError(f"/{kind}", "provider and model must not be empty"))
            clean[kind] = {"provider": provider, "model": model}
        if errors:
            raise serializers.ValidationError([f"{e.pointer}: {e.detail}" for e in errors])
        return clean

    def to_representation(self, value):
        return value


class SessionUpsertSerializer(ClosedSerializer):
    started_at = RFC3339Field(
        required=False,
        allow_null=True,
        within_window=True,
        help_text="When the conversation started (within the last 35 days); null clears it.",
    )
    ended_at = RFC3339Field(
        required=False,
        allow_null=True,
        within_window=True,
        help_text="When it ended; not before started_at. Null clears it.",
    )
    end_user_id = IdentifierField(
        required=False, help_text="Your id of the person the agent talked to (e.g. +14155550123)."
    )
    conversation_type = LabelField(required=False, max_length=64, help_text="e.g. inbound_call.")
    metadata = FlatMetadataField(required=False, help_text="Replaces the session's metadata.")
    default_models = DefaultModelsField(
        required=False,
        help_text="Provider and model per kind of usage (llm, stt, tts) for this session's events that name "
        "none, as LiveKit before 1.2.12 sends them: applied when such events arrive, so they are priced. "
        "Replaces the session's defaults; events already stored keep what they were stored with.",
    )


class SessionSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    agent = serializers.CharField(source="agent.name", help_text="The agent that created the session.")
    started_at = RFC3339Field(allow_null=True)
    ended_at = RFC3339Field(allow_null=True)
    end_user_id = serializers.CharField()
    conversation_type = serializers.CharField()
    metadata = FlatMetadataField()
    default_models = DefaultModelsField()
    livekit_report_mode = described(
        {"type": "string", "enum": [mode.value for mode in Session.ReportMode]}, base=serializers.CharField
    )(
        help_text='How its LiveKit usage was reported: "metrics" (per request), "usage" (per model, at the '
        'end) or "" (not yet).'
    )


class SessionUsageLineSerializer(serializers.Serializer):
    meter = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    quantity = DecimalTextField()
    cost = DecimalTextField(
        help_text="What this usage cost, rounded to the currency's minor unit for display (cost_precise has "
        "every digit)."
    )
    cost_precise = DecimalTextField(
        help_text="Priced when it arrived, at the marginal rate then in force (for tiers: the position the "
        "period had reached, in receipt order); it does not change when other usage arrives."
    )
    unpriced = serializers.BooleanField(
        help_text="No price of the plan matches this usage: it is stored, not billed, and its cost is not known "
        "(0 here). Usage without provider and model (LiveKit before 1.2.12) is the usual cause."
    )


class SessionGapSerializer(serializers.Serializer):
    provider = serializers.CharField()
    model = serializers.CharField()
    kind = serializers.CharField(
        help_text="unclassified_input_tokens (billed as text), unclassified_cached_tokens, "
        "unclassified_output_tokens, input_details_exceed_total, output_details_exceed_total, "
        "negative_<meter>, unbilled_output_image_tokens (usage/gaps.py)."
    )
    tokens = DecimalTextField()
    events = serializers.IntegerField()


class AudioCheckSerializer(serializers.Serializer):
    provider = serializers.CharField()
    model = serializers.CharField()
    tokens = DecimalTextField(help_text="The session's output audio tokens of this model.")
    tokens_per_second = DecimalTextField(help_text="The provider's audio tokens per second of audio.")
    audio_seconds = DecimalTextField(help_text="The audio those tokens stand for.")
    session_seconds = DecimalTextField(help_text="The session's length (reported, else first to last usage).")


class SessionUsageSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    agent = serializers.CharField()
    started_at = RFC3339Field(allow_null=True)
    ended_at = RFC3339Field(allow_null=True)
    end_user_id = serializers.CharField()
    currency = serializers.CharField()
    usage = SessionUsageLineSerializer(many=True)
    cost = DecimalTextField(
        help_text="The whole conversation's per-call cost in the tenant's currency, rounded to its minor unit "
        "for display. Fees, allowances and minimums belong to the period's invoice, not to a call."
    )
    cost_precise = DecimalTextField(
        help_text="The same at full precision (20 decimal places): the sum of its usage lines' cost_precise, "
        "fixed when the usage arrived."
    )
    unpriced = serializers.BooleanField(
        help_text="Some of the conversation's usage has no price (see usage)."
    )
    gaps = SessionGapSerializer(
        many=True,
        help_text="Where the provider's token details did not add up to its totals, per model (LiveKit usage).",
    )
    audio_check = AudioCheckSerializer(
        many=True,
        help_text="Models whose output audio tokens stand for more than twice the session's length (plus 10 s): "
        "implausible, worth checking. Empty when all is plausible or the length is unknown.",
    )


# Writes address a session by an id in the identifier alphabet; reads take any id that was ever stored
# (sessions stored before the alphabet was enforced keep theirs), percent-encoded in the path.
_WRITE_ID = OpenApiParameter(
    "session_id",
    {**identifier_schema(), "example": "AJ_v3jYMGPJFx59"},
    OpenApiParameter.PATH,
    required=True,
    description="Your id of the conversation (e.g. the LiveKit job id).",
)
_READ_ID = OpenApiParameter(
    "session_id",
    {"type": "string", "minLength": 1, "maxLength": 128},
    OpenApiParameter.PATH,
    required=True,
    description="The session's id, percent-encoded.",
)


def _refused_id() -> Response:
    return problem_response(
        400,
        "Bad request",
        "Invalid session id.",
        [
            {
                "pointer": "/session_id",
                "detail": f"must be 1–{validation.MAX_ID_LENGTH} characters: {validation.IDENTIFIER_RULE}",
            }
        ],
    )


class SessionView(APIView):
    """``/api/v1/sessions/{id}``: PUT creates or updates a session; GET reads its usage and priced cost."""

    @extend_schema(
        operation_id="sessions_upsert",
        parameters=[_WRITE_ID],
        request=SessionUpsertSerializer,
        responses={
            200: SessionSerializer,
            201: SessionSerializer,
            **error_responses(
                400,
                401,
                409,
                413,
                415,
                429,
                e400="A field or the session id is invalid, or ended_at is before started_at. Nothing was "
                "changed.",
                e409=OTHER_AGENTS_SESSION.replace("stored", "changed"),
            ),
        },
        summary="Create or update a session",
        description="Creates the session (201) or updates it (200). Fields you leave out keep their value. "
        "Only the agent that created a session may update it.",
    )
    def put(self, request: Request, session_id: str) -> Response:
        principal = request.user
        if not validation.is_identifier(session_id):
            return _refused_id()
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
            if session.agent_id != principal.agent.pk:
                return problem_response(
                    409,
                    "Session of another agent",
                    OTHER_AGENTS_SESSION.replace("stored", "changed"),
                    [{"pointer": "/session_id", "detail": "belongs to another agent"}],
                    code="session-of-another-agent",
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
            if session.ended_at is not None:  # the call is over: its holds stop counting
                control.release_session(principal.tenant, session.session_id)
        return Response(SessionSerializer(session).data, status=201 if created else 200)

    @extend_schema(
        operation_id="sessions_read",
        parameters=[_READ_ID],
        responses={
            200: SessionUsageSerializer,
            **error_responses(401, 404, 429, e404="No session with this id in your tenant."),
        },
        summary="Usage and cost of one conversation",
        description="Any agent key of the tenant may read any of its sessions.",
    )
    def get(self, request: Request, session_id: str) -> Response:
        tenant = request.user.tenant
        session = (
            Session.objects.for_tenant(tenant).filter(session_id=session_id).select_related("agent").first()
        )
        if session is None:
            raise Http404
        cost = billing_selectors.session_cost(tenant, session_id)
        usage = {
            "session_id": session.session_id,
            "agent": session.agent.name,
            "started_at": session.started_at,
            "ended_at": session.ended_at,
            "end_user_id": session.end_user_id,
            "currency": tenant.currency,
            "usage": [
                {**row, "cost": round_money(row["cost"], tenant.currency), "cost_precise": row["cost"]}
                for row in cost.rows
            ],
            "cost": round_money(cost.total, tenant.currency),
            "cost_precise": cost.total,
            "unpriced": any(row["unpriced"] for row in cost.rows),
            "gaps": gaps.session_gaps(tenant.pk, session_id),
            "audio_check": gaps.audio_check(tenant.pk, session),
        }
        return Response(SessionUsageSerializer(usage).data)
