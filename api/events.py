"""POST /api/v1/events, and the ingestion flow the LiveKit endpoints share (DESIGN §4).

Thin: parse, call usage.ingest, render. The ``…Doc`` serializers describe the batch contract for
``/api/schema/`` (usage.ingest validates it by hand) and are exercised by a test that posts the schema's
example.
"""

from __future__ import annotations

import time

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.problems import PROBLEM, problem_response
from observability import metrics
from usage import ingest, validation

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


class EventDoc(serializers.Serializer):
    id = serializers.RegexField(
        r"^[A-Za-z0-9._:-]{1,128}$", help_text="Client-chosen id, deduplicated forever per tenant."
    )
    timestamp = serializers.DateTimeField(
        help_text="RFC 3339 with offset; within the last 35 days, ≤ 5 min ahead."
    )
    session_id = serializers.CharField(required=False, max_length=128)
    provider = serializers.CharField(required=False, max_length=128)
    model = serializers.CharField(required=False, max_length=128)
    usage = serializers.DictField(
        child=serializers.DecimalField(max_digits=15, decimal_places=6, min_value=0),
        help_text="Meter code → quantity (JSON number or decimal string, ≥ 0, ≤ 15 significant digits, ≤ 6 places).",
    )
    metadata = serializers.DictField(
        required=False, help_text="Flat object: ≤ 50 keys of ≤ 40 chars, values ≤ 500 chars."
    )


class EventBatchDoc(serializers.Serializer):
    events = EventDoc(many=True, help_text="1–1000 events; the batch is atomic.")


class IngestResultDoc(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    conflicts = serializers.IntegerField()
    conflicting_events = serializers.ListField(child=serializers.DictField(), help_text="[{index, id}]")
    ignored = serializers.IntegerField(
        required=False, help_text="LiveKit objects that carry no billable usage."
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
                principal.tenant, principal.agent, batch, session_mode=self.session_mode
            )
        except validation.IngestError as exc:
            return _invalid(exc)
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


class EventsView(IngestView):
    @extend_schema(
        operation_id="events_create",
        request=EventBatchDoc,
        responses={200: IngestResultDoc, 400: PROBLEM, 413: PROBLEM, 422: PROBLEM, 429: PROBLEM},
        summary="Submit usage events (1–1000, atomic, deduplicated by id)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)
