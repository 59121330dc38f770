"""Thin API views: parse, call usage.ingest, render (DESIGN §4)."""

from __future__ import annotations

import time

from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from usage import ingest, livekit, validation
from usage.api import serializers as s
from usage.api.problems import problem_response
from usage.models import Session

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


def _invalid(exc: validation.IngestError) -> Response:
    return problem_response(
        exc.status,
        exc.title,
        "Nothing was stored. Fix the fields listed in errors and resend the whole batch.",
        [e.as_dict() for e in exc.errors],
        code="invalid-usage",
    )


PROBLEM = OpenApiResponse(description="application/problem+json with errors [{pointer, detail}]")


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
        return Response(result.as_dict(), status=status.HTTP_200_OK)


class EventsView(IngestView):
    @extend_schema(
        operation_id="events_create",
        request=s.EventBatchDoc,
        responses={200: s.IngestResultDoc, 400: PROBLEM, 413: PROBLEM, 422: PROBLEM, 429: PROBLEM},
        summary="Submit usage events (1–1000, atomic, deduplicated by id)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class LiveKitMetricsView(IngestView):
    validator = staticmethod(livekit.validate_livekit_metrics)
    session_mode = "metrics"

    @extend_schema(
        operation_id="livekit_metrics_create",
        request=s.LiveKitMetricsDoc,
        responses={200: s.IngestResultDoc, 409: PROBLEM, 422: PROBLEM},
        summary="Submit LiveKit metrics objects as model_dump() gives them",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class LiveKitUsageView(IngestView):
    validator = staticmethod(livekit.validate_livekit_usage)
    session_mode = "usage"

    @extend_schema(
        operation_id="livekit_usage_create",
        request=s.LiveKitUsageDoc,
        responses={200: s.IngestResultDoc, 409: PROBLEM, 422: PROBLEM},
        summary="Submit a session's per-model usage at shutdown (AgentSession.usage)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class SessionView(APIView):
    @extend_schema(
        operation_id="sessions_upsert",
        request=s.SessionUpsertSerializer,
        responses={200: s.SessionSerializer, 201: s.SessionSerializer, 400: PROBLEM},
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
        serializer = s.SessionUpsertSerializer(data=request.data)
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
        return Response(s.SessionSerializer(session).data, status=201 if created else 200)
