"""DRF fields shared by the API's resources, and how the API writes decimals.

The event batches themselves are validated by usage.ingest (a hand-written validator: a 1000-event batch
through DRF fields costs more than storing it); these fields serve the session upsert, whose fields follow
the same rules as an event's.
"""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from usage import validation


def decimal_text(value: Decimal) -> str:
    """A decimal as the read API writes it: a JSON string without exponent or trailing zeros ("0" for 0)."""
    return format(value.normalize(), "f") if value else "0"


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
