"""DRF fields shared by the API's resources, their OpenAPI schemas, and how the API writes decimals.

The event batches themselves are validated by usage.validation (a hand-written validator: a 1000-event batch
through DRF fields costs more than storing it); their serializers only describe them, with the
schemas below, which say what the validator says (docs/decisions/007-identifiers-and-write-isolation.md). The
session upsert and the read queries validate with these fields.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from billing import periods
from usage import validation

# Schema patterns are ECMA-262 regular expressions, where "$" (without the m flag) is the end of the input.
TIMESTAMP_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$",
    "description": "RFC 3339 with a UTC offset (Z or ±hh:mm); digits below the microsecond are truncated.",
}
DECIMAL_TEXT_SCHEMA = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "example": "12.5"}
DATE_SCHEMA = {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
_PRINTABLE = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$"


def identifier_schema(max_length: int = validation.MAX_ID_LENGTH, *, blank: bool = False) -> dict:
    """The identifier alphabet as a JSON schema (``blank``: "" is allowed too, meaning none)."""
    pattern = rf"(?!\.\.?$)[{validation.IDENTIFIER_CHARACTERS}]+"  # usage.validation.IDENTIFIER_RE in ECMA
    return {
        "type": "string",
        "minLength": 0 if blank else 1,
        "maxLength": max_length,
        "pattern": f"^({pattern})?$" if blank else f"^{pattern}$",
        "description": f"1–{max_length} characters: {validation.IDENTIFIER_RULE}"
        + (' ("" for none)' if blank else "")
        + ".",
    }


def label_schema(max_length: int) -> dict:
    return {
        "type": "string",
        "maxLength": max_length,
        "pattern": _PRINTABLE,
        "description": f"Up to {max_length} printable characters (no control characters or line breaks).",
    }


METADATA_SCHEMA = {
    "type": "object",
    "maxProperties": validation.MAX_METADATA_KEYS,
    "propertyNames": identifier_schema(validation.MAX_METADATA_KEY_LENGTH),
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": validation.MAX_METADATA_VALUE_LENGTH, "pattern": r"^[^\u0000]*$"},
            {"type": "number", "exclusiveMinimum": -1e15, "exclusiveMaximum": 1e15},
            {"type": "boolean"},
            {"type": "null"},
        ]
    },
    "description": f"Flat: at most {validation.MAX_METADATA_KEYS} keys in the identifier alphabet of at most "
    f"{validation.MAX_METADATA_KEY_LENGTH} characters; values are strings of at most "
    f"{validation.MAX_METADATA_VALUE_LENGTH} characters (free text), numbers below 10^15 in size, booleans "
    "or null. No nested objects or lists.",
    "example": {"room": "dental-line-7f3a", "turns": 11},
}


def decimal_text(value: Decimal) -> str:
    """A decimal as the read API writes it: a JSON string without exponent or trailing zeros ("0" for 0)."""
    return format(value.normalize(), "f") if value else "0"


@extend_schema_field(DECIMAL_TEXT_SCHEMA)
class DecimalTextField(serializers.Field):
    """A decimal, written as ``decimal_text`` writes it (exact: no float on the way)."""

    def to_representation(self, value):
        return decimal_text(value)


@extend_schema_field(TIMESTAMP_SCHEMA)
class RFC3339Field(serializers.Field):
    """An RFC 3339 timestamp as usage.validation reads it; with ``within_window``, also inside the window
    events are accepted in (35 days back, 5 minutes ahead), so every stored time is a real recent one."""

    default_error_messages = {"invalid": "{reason}"}

    def __init__(self, *, within_window: bool = False, **kwargs):
        self.within_window = within_window
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            value = validation.parse_timestamp(data)
        except ValueError as exc:
            self.fail("invalid", reason=f"The timestamp {exc}.")
        if self.within_window and (problem := validation.check_window(value, timezone.now())):
            self.fail("invalid", reason=f"The timestamp {problem}.")
        return value

    def to_representation(self, value):
        return value.isoformat().replace("+00:00", "Z") if value else None


@extend_schema_field(identifier_schema(blank=True))
class IdentifierField(serializers.CharField):
    """An identifier in the one alphabet (usage.validation.IDENTIFIER_RE, full match); "" means none."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", validation.MAX_ID_LENGTH)
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        if data == "":
            return ""
        if not validation.is_identifier(data, self.max_length):
            raise serializers.ValidationError(
                f"Must be 1–{self.max_length} characters: {validation.IDENTIFIER_RULE}."
            )
        return data


@extend_schema_field(label_schema(64))
class LabelField(serializers.CharField):
    """A short printable label (a conversation type): no control characters, line breaks or NUL."""

    def __init__(self, **kwargs):
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        errors: list[validation.FieldError] = []
        value = validation.text_field(data, "", self.max_length or 10**6, errors)
        if errors:
            raise serializers.ValidationError(f"The text {errors[0].detail}.")
        return value


@extend_schema_field(METADATA_SCHEMA)
class FlatMetadataField(serializers.Field):
    def to_internal_value(self, data):
        errors: list[validation.FieldError] = []
        clean = validation.clean_metadata(data, "", errors)
        if errors:
            raise serializers.ValidationError([f"{e.pointer or '/'}: {e.detail}" for e in errors])
        return clean

    def to_representation(self, value):
        return value


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


class SentEmptyIsAValue(serializers.Field):
    """A query parameter sent empty (``?start=``) is a value, and refused, rather than read as left out:
    the schema says what a value must be, and "" is none of them."""

    def get_value(self, dictionary):
        return dictionary.get(self.field_name, empty)


@extend_schema_field(DATE_SCHEMA)
class QueryDateField(SentEmptyIsAValue):
    """A day as YYYY-MM-DD (full match: Django's own parser accepts a trailing newline), within
    billing.periods' queryable days, so a day or a month later is still a date."""

    def to_internal_value(self, data):
        try:
            day = date.fromisoformat(data) if isinstance(data, str) and _DATE_RE.fullmatch(data) else None
        except ValueError:
            day = None
        if day is None:
            raise serializers.ValidationError("Must be a date as YYYY-MM-DD.")
        if not periods.FIRST_QUERY_DAY <= day <= periods.LAST_QUERY_DAY:
            raise serializers.ValidationError(
                f"Must be between {periods.FIRST_QUERY_DAY} and {periods.LAST_QUERY_DAY}."
            )
        return day

    def to_representation(self, value):
        return value.isoformat()


def described(
    schema: dict, component: str | None = None, base: type[serializers.Field] = serializers.Field
) -> type[serializers.Field]:
    """A ``base`` field class whose schema is ``schema``: for the serializers of bodies that usage.validation
    checks by hand (``component``: shown once under that name in the schema)."""
    return extend_schema_field(schema, component_name=component)(type("DescribedField", (base,), {}))


# A body that holds only its declared fields: others are refused, and the schema says so
# (``additionalProperties: false``). (A comment, not a docstring: the schema would show it to API users.)
class ClosedSerializer(serializers.Serializer):
    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return attrs


class ClosedSerializerSchema(OpenApiSerializerExtension):
    target_class = ClosedSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        return {**auto_schema._map_basic_serializer(self.target, direction), "additionalProperties": False}


# The shared parts of the hand-validated bodies, each shown once in the schema's components.
IdentifierDoc = described(identifier_schema(), "Identifier")
TimestampDoc = described(TIMESTAMP_SCHEMA, "Timestamp")
MetadataDoc = described(METADATA_SCHEMA, "Metadata")
