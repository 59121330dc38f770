"""POST /api/v1/livekit/metrics and /api/v1/livekit/usage: LiveKit's own objects, ingested as events.

A session is reported one way or the other, never both (usage.ingest refuses the second with a 409).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from api.events import IngestResultDoc, IngestView
from api.problems import PROBLEM
from usage import livekit


class LiveKitMetricsDoc(serializers.Serializer):
    session_id = serializers.CharField(max_length=128)
    metrics = serializers.ListField(
        child=serializers.DictField(), help_text="LiveKit metrics model_dump()s (any 1.x)."
    )


class LiveKitUsageDoc(serializers.Serializer):
    session_id = serializers.CharField(max_length=128)
    usage = serializers.ListField(
        child=serializers.DictField(), help_text="AgentSession.usage model_usage entries."
    )
    timestamp = serializers.DateTimeField(
        required=False, help_text="When the usage was measured; default now."
    )


class LiveKitMetricsView(IngestView):
    validator = staticmethod(livekit.validate_livekit_metrics)
    session_mode = "metrics"

    @extend_schema(
        operation_id="livekit_metrics_create",
        request=LiveKitMetricsDoc,
        responses={200: IngestResultDoc, 409: PROBLEM, 422: PROBLEM},
        summary="Submit LiveKit metrics objects as model_dump() gives them",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class LiveKitUsageView(IngestView):
    validator = staticmethod(livekit.validate_livekit_usage)
    session_mode = "usage"

    @extend_schema(
        operation_id="livekit_usage_create",
        request=LiveKitUsageDoc,
        responses={200: IngestResultDoc, 409: PROBLEM, 422: PROBLEM},
        summary="Submit a session's per-model usage at shutdown (AgentSession.usage)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)
