"""Serializers: the session upsert, and the shapes of the ingestion bodies for the OpenAPI schema.

The event batches themselves are validated by usage.validation (a hand-written validator: a 1000-event batch
through DRF fields costs more than storing it); the serializers named ``…Doc`` describe the same contract
for ``/api/schema/`` and are exercised by a test that posts the schema's example.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from usage import validation


@extend_schema_field(OpenApiTypes.DATETIME)
class RFC3339Field(serializers.Field):
    default_error_messages = {"invalid": "{reason}"}

    def to_internal_value(self, data):
        try:
            return validation.parse_timestamp(data)
        except ValueError as exc:
            self.fail("invalid", reason=f"The timestamp {exc}.")

    def to_representation(self, value):
        return value.isoformat().replace("+00:00", "Z") if value else None


class StorableCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        if validation.UNSTORABLE_RE.search(data):
            raise serializers.ValidationError("Must not contain NUL characters or unpaired surrogates.")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.OBJECT)
class FlatMetadataField(serializers.Field):
    def to_internal_value(self, data):
        errors: list[validation.FieldError] = []
        clean = validation.clean_metadata(data, "", errors)
        if errors:
            raise serializers.ValidationError([f"{e.pointer or '/'}: {e.detail}" for e in errors])
        return clean

    def to_representation(self, value):
        return value


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
