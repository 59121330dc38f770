"""POST /api/v1/livekit/metrics and /api/v1/livekit/usage: LiveKit's own objects, ingested as events.

A session is reported one way or the other, never both (usage.ingest refuses the second with a 409).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers

from api.events import INGEST_RESPONSES, OTHER_AGENTS_SESSION, IngestView
from api.fields import IdentifierDoc, TimestampDoc, described
from api.problems import error_responses
from usage import livekit, validation

_LIVEKIT_OBJECT = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
    "additionalProperties": True,
}
METRICS_SCHEMA = {
    "anyOf": [
        {
            "type": "array",
            "minItems": 1,
            "maxItems": validation.MAX_EVENTS_PER_BATCH,
            "items": _LIVEKIT_OBJECT,
        },
        _LIVEKIT_OBJECT,
    ],
    "description": "1–1000 LiveKit metrics objects as `model_dump()` gives them (any livekit-agents 1.x), or "
    "`metrics_collected` events holding them, or one such object. Objects that bill nothing (VAD, "
    "end of utterance) are counted in `ignored`.",
}
MODEL_USAGE_SCHEMA = {
    "anyOf": [
        {"type": "array", "minItems": 1, "maxItems": 100, "items": _LIVEKIT_OBJECT},
        {
            "type": "object",
            "required": ["model_usage"],
            "properties": {
                "model_usage": {"type": "array", "minItems": 1, "maxItems": 100, "items": _LIVEKIT_OBJECT}
            },
        },
    ],
    "description": "The `model_usage` entries of `AgentSession.usage` at shutdown (1–100), or the usage "
    "object holding them.",
}
SESSION_ID_HELP = (
    "The conversation: your LiveKit job id (`ctx.job.id`, as the Python SDK sends it by default), room sid or "
    "room name, in the identifier alphabet. Its first report creates the session for your agent."
)
MODE_CONFLICT = (
    " Also 409 when the session was already reported the other way (per-request metrics vs per-model usage), "
    "which would count its usage twice."
)
LIVEKIT_RESPONSES = {**INGEST_RESPONSES, **error_responses(409, e409=OTHER_AGENTS_SESSION + MODE_CONFLICT)}


class LiveKitMetricsSerializer(serializers.Serializer):
    session_id = IdentifierDoc(help_text=SESSION_ID_HELP)
    metrics = described(METRICS_SCHEMA)()


class LiveKitUsageSerializer(serializers.Serializer):
    session_id = IdentifierDoc(help_text=SESSION_ID_HELP)
    usage = described(MODEL_USAGE_SCHEMA)()
    timestamp = TimestampDoc(
        required=False,
        allow_null=True,
        help_text="When the usage was measured (within the last 35 days); default: when it is received.",
    )


@extend_schema_view(
    post=extend_schema(
        operation_id="livekit_metrics_create",
        request=LiveKitMetricsSerializer,
        responses=LIVEKIT_RESPONSES,
        summary="Submit LiveKit metrics",
        description="Send the metrics objects LiveKit emits during a session (`metrics_collected`). Each gets "
        "an id derived from what identifies it, so resending them, or LiveKit's duplicate emission after an "
        "agent hand-off, counts as a duplicate.",
    )
)
class LiveKitMetricsView(IngestView):
    validator = staticmethod(livekit.validate_livekit_metrics)
    session_mode = "metrics"


@extend_schema_view(
    post=extend_schema(
        operation_id="livekit_usage_create",
        request=LiveKitUsageSerializer,
        responses=LIVEKIT_RESPONSES,
        summary="Submit a session's LiveKit usage summary",
        description="Send `AgentSession.usage` (per-model totals) once, when the session ends. Resending the "
        "same report is a duplicate; a changed one is a conflict.",
    )
)
class LiveKitUsageView(IngestView):
    validator = staticmethod(livekit.validate_livekit_usage)
    session_mode = "usage"
