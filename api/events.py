"""POST /api/v1/events and POST /api/v1/events/{id}/retract, and the ingestion flow the LiveKit endpoints share
(DESIGN §4, §14; corrections: docs/decisions/021-event-corrections.md).

Thin: parse, call usage.ingest or usage.corrections, render. The serializers here only describe the batch for
``/api/schema/`` (usage.validation checks it by hand); tests post the schema's examples and fuzz the schema
against the server.
"""

from __future__ import annotations

import time
from decimal import Decimal

from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.fields import (
    ClosedSerializer,
    DecimalTextField,
    IdentifierDoc,
    MetadataDoc,
    RFC3339Field,
    TimestampDoc,
    described,
    identifier_schema,
    label_schema,
)
from api.problems import error_responses, problem_response
from observability import metrics
from usage import corrections, ingest, validation
from usage.models import UsageEvent

_METER_CACHE_SECONDS = 10.0
_meter_cache: tuple[float, frozenset[str]] = (0.0, frozenset())


def meter_codes() -> frozenset[str]:
    """Active meter codes, cached for a few seconds per process (admin edits apply within that time)."""
    global _meter_cache
    loaded_at, codes = _meter_cache
    if time.monotonic() - loaded_at > _METER_CACHE_SECONDS:
        codes = validation.active_meter_codes()
        _meter_cache = (time.monotonic(), codes)
    return codes


QUANTITIES_SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$", "maxLength": 64},
    "additionalProperties": {
        "anyOf": [
            {"type": "number", "minimum": 0, "exclusiveMaximum": 1e15},
            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        ]
    },
    "description": "Meter code → quantity, at least one. A quantity is a JSON number or a plain decimal string "
    '("12.5": no sign, exponent or spaces), ≥ 0, with at most 15 digits of which at most 6 decimals. Unknown '
    "or inactive meter codes are refused.",
    "example": {"llm_input_text_tokens": 1200, "llm_output_text_tokens": 85},
}


class EventSerializer(ClosedSerializer):
    id = IdentifierDoc(
        help_text="Your id for this event, unique in your tenant forever: resending it with the same payload "
        "counts as a duplicate, with a different payload as a conflict (never stored)."
    )
    timestamp = TimestampDoc(
        help_text="When the usage happened: RFC 3339 with an offset, within the last 35 days and at most "
        "5 minutes ahead of the server's clock."
    )
    session_id = described(identifier_schema(blank=True))(
        required=False,
        allow_null=True,
        help_text="The conversation this usage belongs to. Its first event creates the session for your "
        "agent; only that agent may write to it.",
    )
    provider = described(label_schema(128))(
        required=False, allow_null=True, help_text="Who served the usage, e.g. api.openai.com."
    )
    model = described(label_schema(128))(required=False, allow_null=True, help_text="e.g. gpt-4o-mini.")
    usage = described(QUANTITIES_SCHEMA, "Quantities")()
    metadata = MetadataDoc(required=False, allow_null=True)
    replaces = described(identifier_schema(blank=True))(
        required=False,
        allow_null=True,
        help_text="The id of an event you sent before that this one corrects (for example with the right "
        "quantities or model). That event is retracted when this one is stored: it stays stored and its id "
        "stays taken, but it no longer counts anywhere (usage, costs, invoices, balance). It must be yours, "
        "of the same session, not corrected already and at most 35 days old. To correct a correction, "
        "replace it in turn.",
    )


class EventBatchSerializer(ClosedSerializer):
    events = serializers.ListField(
        child=EventSerializer(),
        min_length=1,
        max_length=validation.MAX_EVENTS_PER_BATCH,
        help_text="1–1000 events. The batch is atomic: if any event is invalid, none is stored.",
    )


class ConflictingEventSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the list you sent.")
    id = serializers.CharField(help_text="Its id.")


class UnpricedUsageSerializer(serializers.Serializer):
    meter = serializers.CharField()
    provider = serializers.CharField(help_text="Empty when the event named none.")
    model = serializers.CharField(help_text="Empty when the event named none.")
    events = serializers.IntegerField(help_text="Events of this request that carried this usage.")
    reason = serializers.ChoiceField(
        choices=["no_plan", "no_price", "no_provider_rate"],
        help_text="no_plan: no plan version in force that day; no_price: no price matches; no_provider_rate: "
        "a cost-plus price matches but no provider rate gives the cost.",
    )


class ReplacementSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the list you sent.")
    id = serializers.CharField(help_text="Its id.")
    replaces = serializers.CharField(help_text="The event it retracted.")


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(
        help_text="Events already stored with the same payload (not counted again)."
    )
    conflicts = serializers.IntegerField(
        help_text="Events whose id is already stored with a different payload: not stored, the stored one "
        "is unchanged. Send new usage under new ids."
    )
    conflicting_events = ConflictingEventSerializer(many=True)
    ignored = serializers.IntegerField(
        required=False, help_text="LiveKit objects that bill nothing (e.g. VAD and end-of-utterance metrics)."
    )
    replacements = ReplacementSerializer(
        many=True,
        required=False,
        help_text='Present when some event of the request carries "replaces": the ones this request stored, '
        "each with the event it retracted. A replacement sent again counts as a duplicate and is not listed "
        "again (its original stays retracted).",
    )
    unpriced = UnpricedUsageSerializer(
        many=True,
        required=False,
        help_text="Present whenever some usage this request stored matches no price of the tenant's plan: it "
        "is stored and counted, but not billed until a price covers it (never shown as free). Usage without "
        "provider and model (LiveKit before 1.2.12) is the usual cause.",
    )


OTHER_AGENTS_SESSION = (
    "The session was created by another agent of your tenant; only that agent may write to it. Nothing was "
    "stored. Use a session id of your own (a hand-off to another agent is a new session)."
)
INGEST_RESPONSES = {
    200: IngestResultSerializer,
    **error_responses(400, 401, 409, 413, 415, 422, 429, e409=OTHER_AGENTS_SESSION),
}
CORRECTION_ANSWERS = {
    "e403": "The event named (by the path, or by an event's replaces) was sent by another agent of your "
    "tenant: only that agent may correct it. Nothing was changed.",
    "e404": "No event with this id in your tenant (by the path, or by an event's replaces). Nothing was changed.",
}
EVENTS_RESPONSES = {
    **INGEST_RESPONSES,
    **error_responses(
        403,
        404,
        409,
        422,
        e409=OTHER_AGENTS_SESSION
        + ' Or an event\'s "replaces" names an event already corrected (retracted, or replaced by another '
        "event): a correction is final; correct the replacement instead.",
        e422="The batch is invalid: nothing was stored. `errors` holds a JSON pointer and a reason for every "
        'offending field — among them a "replaces" naming an event more than 35 days old, or a replacement '
        "for another session than its original's; fix them and resend the whole batch.",
        **CORRECTION_ANSWERS,
    ),
}


_CORRECTION_TITLES = {
    "event-not-found": "Event not found",
    "event-of-another-agent": "Event of another agent",
    "event-already-corrected": "Event already corrected",
    "event-not-correctable": "Event too old to correct",
    "correction-of-another-session": "Correction of another session",
}


def _correction_refused(exc: corrections.CorrectionRefused, stored: str) -> Response:
    return problem_response(
        exc.status,
        _CORRECTION_TITLES[exc.code],
        f"{exc.detail} Nothing was {stored}.",
        [e.as_dict() for e in exc.errors],
        code=exc.code,
    )


def _invalid(exc: validation.IngestError) -> Response:
    return problem_response(
        exc.status,
        exc.title,
        "Nothing was stored. Fix the fields listed in errors and resend the whole batch.",
        [e.as_dict() for e in exc.errors],
        code="invalid-usage",
    )


class IngestView(APIView):
    """Shared flow of the three ingestion endpoints: validate everything, then store in one transaction."""

    validator = staticmethod(validation.validate_event_batch)
    session_mode = ""

    def post(self, request: Request) -> Response:
        principal = request.user
        try:
            batch = self.validator(request.data, meter_codes(), timezone.now())
            result = ingest.store_events(
                principal.tenant,
                principal.agent,
                batch,
                session_mode=self.session_mode,
            )
        except validation.IngestError as exc:
            return _invalid(exc)
        except corrections.CorrectionRefused as exc:
            return _correction_refused(exc, "stored")
        except ingest.SessionOfAnotherAgent as exc:
            if batch.session_id:
                pointers = ["/session_id"]
            else:
                pointers = [
                    f"/events/{r.index}/session_id" for r in batch.records if r.session_id in exc.session_ids
                ]
            return problem_response(
                status.HTTP_409_CONFLICT,
                "Session of another agent",
                OTHER_AGENTS_SESSION,
                [{"pointer": p, "detail": "belongs to another agent"} for p in pointers],
                code="session-of-another-agent",
            )
        except ingest.SessionModeConflict as exc:
            other = "per-model usage" if str(exc) == "usage" else "per-request metrics"
            return problem_response(
                status.HTTP_409_CONFLICT,
                "Session already reported",
                f"This session's usage was already reported as {other}; reporting it both ways would count it "
                "twice. Nothing was stored.",
                [{"pointer": "/session_id", "detail": f"already reported as {other}"}],
                code="session-report-mode",
            )
        metrics.record_ingest(
            request.resolver_match.view_name, result.accepted, result.duplicates, len(result.conflicts)
        )
        return Response(result.as_dict(), status=status.HTTP_200_OK)


@extend_schema_view(
    post=extend_schema(
        operation_id="events_create",
        request=EventBatchSerializer,
        responses=EVENTS_RESPONSES,
        summary="Submit usage events",
        description="Send 1–1000 usage events. The batch is all or nothing: if any event is invalid, the "
        "answer is 422 with every offending field and nothing is stored. Events are deduplicated by id "
        "forever: resending an accepted batch is safe (its events count as duplicates). A 200 is sent only "
        'once the events are stored. An event with "replaces" corrects one you sent before, which is '
        "retracted in the same transaction (404, 403, 409 or 422 naming the field when it cannot be, and "
        "then nothing is stored).",
    )
)
class EventsView(IngestView):
    pass


@extend_schema_field(
    {
        "type": "string",
        "maxLength": corrections.MAX_REASON_LENGTH,
        "pattern": r"^[^\u0000]*$",
        "description": "Free text of at most 500 characters (no NUL).",
    }
)
class ReasonField(serializers.CharField):
    """Free text, as metadata values are: any string but NUL and unpaired surrogates, which cannot be stored."""

    def __init__(self, **kwargs):
        super().__init__(
            allow_blank=True, trim_whitespace=False, max_length=corrections.MAX_REASON_LENGTH, **kwargs
        )

    def to_internal_value(self, data):
        errors: list[validation.FieldError] = []
        value = validation.text_field(data, "", corrections.MAX_REASON_LENGTH, errors, printable=False)
        if errors:
            raise serializers.ValidationError(f"The text {errors[0].detail}.")
        return value


class RetractSerializer(ClosedSerializer):
    reason = ReasonField(
        required=False, help_text="Why, for your records and your tenant's webhooks (at most 500 characters)."
    )


class RetractionSerializer(serializers.Serializer):
    id = serializers.CharField(
        help_text="The event's id (it stays taken: a resend of it is not counted again)."
    )
    retracted_at = RFC3339Field(help_text="When it was retracted (the first time, for a resend).")
    reason = serializers.CharField(help_text='As given ("" for none).')
    session_id = serializers.CharField(help_text='Its session ("" for none).')
    timestamp = RFC3339Field(help_text="When its usage happened, as sent.")
    provider = serializers.CharField()
    model = serializers.CharField()
    removed_usage = serializers.DictField(
        child=DecimalTextField(),
        help_text="What no longer counts: the event's quantities, per meter code, as they were stored.",
    )


def _retraction(event: UsageEvent) -> dict:
    return {
        "id": event.event_id,
        "retracted_at": event.retracted_at,
        "reason": event.retraction_reason,
        "session_id": event.session_id,
        "timestamp": event.timestamp,
        "provider": event.provider,
        "model": event.model,
        "removed_usage": {meter: Decimal(quantity) for meter, quantity in event.usage.items()},
    }


_EVENT_ID = OpenApiParameter(
    "event_id",
    {**identifier_schema(), "example": "evt-81"},
    OpenApiParameter.PATH,
    required=True,
    description="The id you sent the event with.",
)


class EventRetractView(APIView):
    @extend_schema(
        operation_id="events_retract",
        parameters=[_EVENT_ID],
        request=RetractSerializer,
        responses={
            200: RetractionSerializer,
            **error_responses(
                400,
                401,
                403,
                404,
                409,
                413,
                415,
                422,
                429,
                e400="The body is not a JSON object, or has a field other than reason, or reason is not text of "
                "at most 500 characters. Nothing was changed.",
                e409="The event was already corrected: replaced by another event, retracted by platform staff, "
                "or retracted with another reason. A correction is final. Nothing was changed.",
                e422="The event is more than 35 days old: corrections are accepted in the window late usage "
                "is, so a finalized period can still be adjusted on the next invoice. Nothing was changed.",
                **CORRECTION_ANSWERS,
            ),
        },
        summary="Retract an event",
        description="Takes an event you sent out of everything that counts usage — your usage, session "
        "costs, the balance, the draft invoice, and (as an adjustment on the next invoice) a finalized "
        "period — in one transaction. The event stays stored, marked retracted, and its id stays taken. "
        "Idempotent: retracting it again with the same reason answers the same. The body is optional. To "
        'correct quantities instead, send the corrected event with "replaces".',
    )
    def post(self, request: Request, event_id: str) -> Response:
        principal = request.user
        if not validation.is_identifier(event_id):  # "." and "..", which no client can address
            raise Http404
        body = RetractSerializer(data=request.data if request.data else {})
        body.is_valid(raise_exception=True)
        try:
            done = corrections.retract(
                principal.tenant,
                event_id,
                agent=principal.agent,
                reason=body.validated_data.get("reason", ""),
            )
        except corrections.CorrectionRefused as exc:
            return _correction_refused(exc, "changed")
        return Response(RetractionSerializer(_retraction(done.event)).data)
