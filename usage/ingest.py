"""The write path: validate a batch, dedupe, store and roll up — in one transaction (DESIGN §4).

Everything is checked before anything is written, so an invalid batch stores nothing. Accepted events are
inserted with ``ON CONFLICT DO NOTHING`` in event-id order and rolled up in the same SQL statement from the
rows that insert actually returned (per session in ``usage_usagerollup``, per agent in
``usage_agentrollup``), so a concurrent resend of the same event can never be counted twice: the second
transaction waits on the unique index, inserts nothing, and so rolls up nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from django.db import OperationalError, connection, transaction

from tenants.models import Agent, Tenant
from usage import meters as meter_catalogue
from usage.models import Meter, Session

MAX_EVENTS_PER_BATCH = 1000
MAX_PAST = timedelta(days=35)
MAX_FUTURE = timedelta(minutes=5)
MAX_SIGNIFICANT_DIGITS = 15
MAX_DECIMAL_PLACES = 6
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
MAX_ERRORS_REPORTED = 100
METADATA_NUMBER_LIMIT = Decimal(10) ** 15

EVENT_FIELDS = frozenset({"id", "timestamp", "session_id", "provider", "model", "usage", "metadata"})
_EVENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RFC3339_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_DECIMAL_STRING_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
# NUL cannot be stored by PostgreSQL; lone surrogates cannot be encoded as UTF-8. Refuse both up front.
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
_RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
# Fast paths of the validation loop (a 1000-event batch runs it 1000 times): a plain int below these limits
# passes the full checks unchanged, so it skips them. Anything else takes the full checks.
_INT_QUANTITY_LIMIT = 10**MAX_SIGNIFICANT_DIGITS
# A quantity whose text is already canonical (what quantity_text(canonical_quantity(q)) returns) and within
# the limits: 1–9 integer digits and 1–6 decimals not ending in 0, or a positive integer of ≤ 15 digits. A
# JSON number parsed as Decimal keeps the literal's digits, so str() of it is tested the same way.
_CANONICAL_QUANTITY_RE = re.compile(r"(?:0|[1-9][0-9]{0,8})\.[0-9]{0,5}[1-9]\Z|[1-9][0-9]{0,14}\Z")
_METADATA_INT_LIMIT = int(METADATA_NUMBER_LIMIT)


def _canonical_json_encoder() -> Callable[[Any], str]:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, as one reusable encoder.

    json.dumps builds a new C encoder on every call, which costs twice the encoding itself; the payload hash
    of a 1000-event batch calls it 1000 times. The C encoder is built once here (no cycle check: the input
    is parsed JSON), checked against json.dumps on a sample, and json.dumps's own path is the fallback.
    """
    reference = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is not None:
        try:
            encode = make_encoder(
                None, reference.default, json.encoder.encode_basestring, None, ":", ",", True, False, True
            )
            sample = [7, None, 'é\n"\\\u2028', [["a", "1.5"]], {"b": 1.5, "a": True, "n": None, "e": 1e-07}]
            if "".join(encode(sample, 0)) == reference.encode(sample):
                return lambda obj: "".join(encode(obj, 0))
        except (TypeError, ValueError):
            pass
    return reference.encode


_canonical_json = _canonical_json_encoder()


@dataclass(frozen=True)
class FieldError:
    pointer: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


class IngestError(Exception):
    """The batch is invalid; nothing was stored. ``errors`` point at each offending field."""

    def __init__(self, errors: list[FieldError], status: int = 422, title: str = "Invalid usage batch"):
        super().__init__(title)
        self.errors = errors[:MAX_ERRORS_REPORTED]
        self.status = status
        self.title = title


class SessionModeConflict(Exception):
    """The session was already reported the other way (per-request metrics vs per-model usage)."""


@dataclass(slots=True)
class EventRecord:
    """One validated event, ready to store. ``usage`` maps meter codes to canonical decimal strings."""

    index: int
    event_id: str
    timestamp: datetime
    session_id: str
    provider: str
    model: str
    usage: dict[str, str]
    metadata: dict[str, Any]
    source: str

    def identity(self) -> str:
        """The payload as DESIGN §4 compares it ("an identical resend"), canonical: used to tell a repeat of
        an id inside one batch from a reuse. The stored copy is compared in SQL (``_DUPLICATES_SQL``) on the
        same fields. A LiveKit usage report's timestamp is its receipt time, so it is left out."""
        return _canonical_json(
            [
                self.timestamp.isoformat() if self.source != "livekit_usage" else None,
                self.session_id,
                self.provider,
                self.model,
                self.usage,
                self.metadata,
            ]
        )


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": len(self.conflicts),
            "conflicting_events": self.conflicts,
        }
        if self.ignored:
            body["ignored"] = self.ignored
        return body


# --- validation -------------------------------------------------------------------------------------------


def active_meter_codes() -> frozenset[str]:
    return frozenset(Meter.objects.filter(is_active=True).values_list("code", flat=True))


def canonical_quantity(value: Any) -> Decimal:
    """A quantity as DESIGN §4 allows it: a JSON number or decimal string, finite, ≥ 0, ≤ 15 significant
    digits and ≤ 6 decimal places. Raises ValueError with the reason."""
    if isinstance(value, bool) or value is None:
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, str):
        if not _DECIMAL_STRING_RE.match(value):
            raise ValueError('must be a plain decimal string such as "12.5" (no sign, exponent or spaces)')
        quantity = Decimal(value)
    elif isinstance(value, int | Decimal):
        quantity = Decimal(value)
    elif isinstance(value, float):  # only when a caller parsed JSON without parse_float=Decimal
        quantity = Decimal(repr(value))
    else:
        raise ValueError("must be a number or a decimal string")
    if not quantity.is_finite():
        raise ValueError("must be finite")
    if quantity < 0:
        raise ValueError("must be ≥ 0")
    if quantity == 0:
        return Decimal(0)
    normalized = quantity.normalize()
    _, digits, exponent = normalized.as_tuple()
    places = max(-exponent, 0)
    integer_digits = max(len(digits) + exponent, 0)
    if places > MAX_DECIMAL_PLACES:
        raise ValueError(f"has more than {MAX_DECIMAL_PLACES} decimal places")
    if integer_digits + places > MAX_SIGNIFICANT_DIGITS:
        raise ValueError(f"has more than {MAX_SIGNIFICANT_DIGITS} significant digits")
    return normalized


def quantity_text(quantity: Decimal) -> str:
    return format(quantity, "f")


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with a UTC offset, e.g. 2026-11-20T10:00:00Z")
    match = _RFC3339_RE.match(value)
    if match and value[-1] == "Z" and value[10] == "T" and len(value) <= 27:
        # fast path, UTC with at most microseconds (as most clients send it): Python reads it as it is
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("is not a valid calendar date and time") from None
    if not match:
        raise ValueError("must be an RFC 3339 timestamp with a UTC offset, e.g. 2026-11-20T10:00:00Z")
    day, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds; finer digits are truncated
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}{fraction}{offset}")
    except ValueError:
        raise ValueError("is not a valid calendar date and time") from None
    return parsed.astimezone(UTC)


def check_window(timestamp: datetime, now: datetime) -> str | None:
    if timestamp < now - MAX_PAST:
        return "is more than 35 days in the past"
    if timestamp > now + MAX_FUTURE:
        return "is more than 5 minutes in the future"
    return None


def _text_field(value: Any, pointer: str, max_length: int, errors: list[FieldError]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(FieldError(pointer, "must be a string"))
        return ""
    if len(value) > max_length:
        errors.append(FieldError(pointer, f"must be at most {max_length} characters"))
    elif _UNSTORABLE_RE.search(value):
        errors.append(FieldError(pointer, "must not contain NUL characters or unpaired surrogates"))
    return value


def _metadata(value: Any, pointer: str, errors: list[FieldError]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError(pointer, "must be a flat JSON object"))
        return {}
    if len(value) > MAX_METADATA_KEYS:
        errors.append(FieldError(pointer, f"must have at most {MAX_METADATA_KEYS} keys"))
        return {}
    clean: dict[str, Any] = {}
    for key, item in value.items():
        if len(key) <= MAX_METADATA_KEY_LENGTH and not _UNSTORABLE_RE.search(key):
            if (
                type(item) is str
                and len(item) <= MAX_METADATA_VALUE_LENGTH
                and not _UNSTORABLE_RE.search(item)
            ):
                clean[key] = item  # fast path
                continue
            if type(item) is int and abs(item) < _METADATA_INT_LIMIT:
                clean[key] = item  # fast path
                continue
        item_pointer = f"{pointer}/{_escape_pointer(key)}"
        if len(key) > MAX_METADATA_KEY_LENGTH or _UNSTORABLE_RE.search(key):
            errors.append(
                FieldError(
                    item_pointer, f"keys must be at most {MAX_METADATA_KEY_LENGTH} storable characters"
                )
            )
        elif isinstance(item, str):
            _text_field(item, item_pointer, MAX_METADATA_VALUE_LENGTH, errors)
            clean[key] = item
        elif item is None or isinstance(item, bool):
            clean[key] = item
        elif isinstance(item, int | float | Decimal):
            number = Decimal(item) if not isinstance(item, float) else Decimal(repr(item))
            if not number.is_finite() or abs(number) >= METADATA_NUMBER_LIMIT:
                errors.append(
                    FieldError(item_pointer, "numbers in metadata must be finite and below 1e15 in size")
                )
            else:
                clean[key] = int(number) if number == number.to_integral_value() else float(number)
        else:
            errors.append(
                FieldError(item_pointer, "must be a string, number, boolean or null (metadata is flat)")
            )
    return clean


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def validate_event_batch(payload: Any, agent_id: int, meter_codes: frozenset[str], now: datetime) -> Batch:
    """Validate a ``POST /api/v1/events`` body into records, or raise IngestError naming every bad field."""
    if not isinstance(payload, dict):
        raise IngestError([FieldError("", 'the body must be a JSON object with an "events" list')], 400)
    unknown = sorted(set(payload) - {"events"})
    errors = [FieldError(f"/{_escape_pointer(k)}", "unknown field") for k in unknown]
    events = payload.get("events")
    if not isinstance(events, list):
        raise IngestError([*errors, FieldError("/events", "must be a list of 1–1000 events")])
    if not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise IngestError(
            [*errors, FieldError("/events", f"must hold 1–{MAX_EVENTS_PER_BATCH} events, not {len(events)}")]
        )
    records = []
    earliest, latest = now - MAX_PAST, now + MAX_FUTURE
    for index, event in enumerate(events):
        record = _plain_event(event, index, meter_codes, earliest, latest)
        if record is None:
            record = _validate_event(event, f"/events/{index}", index, agent_id, meter_codes, now, errors)
        if record is not None:
            records.append(record)
        if len(errors) >= MAX_ERRORS_REPORTED:
            break
    if errors:
        raise IngestError(errors)
    return dedupe_within_batch(records, "/events")


def _plain(text: Any, limit: int) -> bool:
    """A short ASCII string without NUL: storable as it is (isascii is O(1) in CPython)."""
    return type(text) is str and len(text) <= limit and text.isascii() and "\x00" not in text


def _plain_event(
    event: Any, index: int, meter_codes: frozenset[str], earliest: datetime, latest: datetime
) -> EventRecord | None:
    """The record of an event that is valid in the common way — ASCII text, a valid timestamp, integer or
    canonical quantities, string or integer metadata — as ``_validate_event`` would build it, or None to
    let ``_validate_event`` decide (and report errors). Straight-line checks with no error pointers: a
    1000-event batch runs this 1000 times."""
    if type(event) is not dict or not EVENT_FIELDS.issuperset(event):
        return None
    event_id, stamp = event.get("id"), event.get("timestamp")
    if type(event_id) is not str or not _EVENT_ID_RE.match(event_id):
        return None
    try:
        timestamp = parse_timestamp(stamp)  # its own fast path reads the usual "…Z" form directly
    except ValueError:
        return None
    if not earliest <= timestamp <= latest:
        return None
    session_id, provider, model = (
        event.get("session_id", ""),
        event.get("provider", ""),
        event.get("model", ""),
    )
    if not (_plain(session_id, 128) and _plain(provider, 128) and _plain(model, 128)):
        return None
    metadata = event.get("metadata")
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict or len(metadata) > MAX_METADATA_KEYS:
        return None
    for key, item in metadata.items():
        if not _plain(key, MAX_METADATA_KEY_LENGTH):
            return None
        if not (
            _plain(item, MAX_METADATA_VALUE_LENGTH) or (type(item) is int and abs(item) < _METADATA_INT_LIMIT)
        ):
            return None
    usage_in = event.get("usage")
    if type(usage_in) is not dict or not usage_in:
        return None
    usage = {}
    for code, value in usage_in.items():
        if code not in meter_codes:
            return None
        if type(value) is int and 0 <= value < _INT_QUANTITY_LIMIT:
            usage[code] = str(value)
        elif type(value) in (float, Decimal, str) and _CANONICAL_QUANTITY_RE.match(text := str(value)):
            usage[code] = text
        else:
            return None
    return EventRecord(index, event_id, timestamp, session_id, provider, model, usage, dict(metadata), "api")


def _validate_event(
    event: Any,
    pointer: str,
    index: int,
    agent_id: int,
    meter_codes: frozenset[str],
    now: datetime,
    errors: list[FieldError],
) -> EventRecord | None:
    if not isinstance(event, dict):
        errors.append(FieldError(pointer, "must be an object"))
        return None
    before = len(errors)
    for key in event.keys() - EVENT_FIELDS:
        errors.append(FieldError(f"{pointer}/{_escape_pointer(key)}", "unknown field"))
    event_id = event.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID_RE.match(event_id):
        errors.append(FieldError(f"{pointer}/id", "is required: 1–128 characters of A-Z a-z 0-9 . _ : -"))
    timestamp = None
    try:
        timestamp = parse_timestamp(event.get("timestamp"))
    except ValueError as exc:
        errors.append(FieldError(f"{pointer}/timestamp", str(exc)))
    else:
        if problem := check_window(timestamp, now):
            errors.append(FieldError(f"{pointer}/timestamp", problem))
    session_id, provider, model = event.get("session_id"), event.get("provider"), event.get("model")
    # Fast path: a short storable string passes _text_field unchanged (which also maps None to "").
    if type(session_id) is not str or len(session_id) > 128 or _UNSTORABLE_RE.search(session_id):
        session_id = _text_field(session_id, f"{pointer}/session_id", 128, errors)
    if type(provider) is not str or len(provider) > 128 or _UNSTORABLE_RE.search(provider):
        provider = _text_field(provider, f"{pointer}/provider", 128, errors)
    if type(model) is not str or len(model) > 128 or _UNSTORABLE_RE.search(model):
        model = _text_field(model, f"{pointer}/model", 128, errors)
    metadata = _metadata(event.get("metadata"), f"{pointer}/metadata", errors)
    usage_in = event.get("usage")
    usage: dict[str, str] = {}
    if not isinstance(usage_in, dict) or not usage_in:
        errors.append(
            FieldError(f"{pointer}/usage", "is required: an object of meter code → quantity (≥ 1 entry)")
        )
    else:
        for code, value in usage_in.items():
            # fast paths, = quantity_text(canonical_quantity(value)) where they apply
            if type(value) is int and 0 <= value < _INT_QUANTITY_LIMIT and code in meter_codes:
                usage[code] = str(value)
                continue
            if type(value) in (Decimal, str, float) and code in meter_codes:
                text = str(value)  # a float prints as the literal's digits: usage.api.parsers.loads_fast
                if _CANONICAL_QUANTITY_RE.match(text):
                    usage[code] = text
                    continue
            item_pointer = f"{pointer}/usage/{_escape_pointer(code)}"
            if code not in meter_codes:
                errors.append(FieldError(item_pointer, "unknown meter code"))
                continue
            try:
                usage[code] = quantity_text(canonical_quantity(value))
            except ValueError as exc:
                errors.append(FieldError(item_pointer, str(exc)))
    if len(errors) > before:
        return None
    record = EventRecord(index, event_id, timestamp, session_id, provider, model, usage, metadata, "api")
    return record


@dataclass
class Batch:
    """A validated batch: the distinct records to store, and how many exact repeats the batch itself held."""

    records: list[EventRecord]
    repeats: int = 0
    ignored: int = 0
    session_id: str = ""


def dedupe_within_batch(records: list[EventRecord], pointer_base: str) -> Batch:
    """Drop exact repeats inside one batch (they count as duplicates); refuse the same id with two payloads."""
    seen: dict[str, EventRecord] = {}
    unique: list[EventRecord] = []
    errors = []
    for record in records:
        first = seen.get(record.event_id)
        if first is None:
            seen[record.event_id] = record
            unique.append(record)
        elif first.identity() != record.identity():
            errors.append(
                FieldError(
                    f"{pointer_base}/{record.index}/id",
                    f"repeats the id of {pointer_base}/{first.index} with a different payload",
                )
            )
    if errors:
        raise IngestError(errors)
    return Batch(unique, repeats=len(records) - len(unique))


# --- LiveKit ----------------------------------------------------------------------------------------------


def _livekit_session_id(payload: Mapping[str, Any], errors: list[FieldError]) -> str:
    value = payload.get("session_id")
    if not isinstance(value, str) or not value:
        errors.append(FieldError("/session_id", "is required: the conversation's id (≤ 128 characters)"))
        return ""
    return _text_field(value, "/session_id", 128, errors)


def _metric_event_id(session_id: str, metric: Mapping[str, Any]) -> str:
    """LiveKit metrics carry no unique id, and request_id alone is not one (Deepgram reuses one per stream,
    AssemblyAI sends ""), so the id is derived from the natural key. A resend, or LiveKit's duplicate
    emission after an agent handoff, then maps to the same id."""
    timestamp = metric.get("timestamp")
    key = [
        session_id,
        metric.get("type"),
        metric.get("request_id") or "",
        metric.get("speech_id") or "",
        metric.get("segment_id") or "",
        # normalized, so 1795000001.5, 1795000001.50 and 1795000001.500 are one timestamp (and 1 is 1.0)
        format(
            (Decimal(repr(timestamp)) if isinstance(timestamp, float) else Decimal(timestamp)).normalize(),
            "f",
        ),
    ]
    digest = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()[:40]
    return f"lk:{metric.get('type', '')[:20]}:{digest}"


def _unix_timestamp(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a unix timestamp in seconds")
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("is not a representable unix timestamp") from None


def _stored_usage(
    mapped: meter_catalogue.MappedUsage, meter_codes: frozenset[str], pointer: str, errors: list[FieldError]
) -> dict[str, str]:
    usage = {}
    for code, quantity in mapped.usage.items():
        if code not in meter_codes:
            errors.append(FieldError(pointer, f"maps to meter {code!r}, which is not active"))
            continue
        try:
            usage[code] = quantity_text(canonical_quantity(quantity))
        except ValueError as exc:
            errors.append(FieldError(pointer, f"{code} {exc}"))
    return usage


def validate_livekit_metrics(
    payload: Any, agent_id: int, meter_codes: frozenset[str], now: datetime
) -> Batch:
    """Validate ``POST /api/v1/livekit/metrics``: returns (session id, records, count of non-billable metrics)."""
    if not isinstance(payload, dict):
        raise IngestError([FieldError("", "the body must be a JSON object")], 400)
    errors: list[FieldError] = []
    session_id = _livekit_session_id(payload, errors)
    if payload.get("type") == "metrics_collected" and "metrics" in payload and "session_id" in payload:
        metrics = [payload["metrics"]]  # a single metrics_collected envelope
    else:
        metrics = payload.get("metrics")
        if isinstance(metrics, dict):
            metrics = [metrics]
    if not isinstance(metrics, list) or not 1 <= len(metrics) <= MAX_EVENTS_PER_BATCH:
        errors.append(
            FieldError("/metrics", f"must be a list of 1–{MAX_EVENTS_PER_BATCH} LiveKit metrics objects")
        )
        raise IngestError(errors)
    records: list[EventRecord] = []
    ignored = 0
    for index, metric in enumerate(metrics):
        pointer = f"/metrics/{index}"
        if isinstance(metric, dict) and metric.get("type") == "metrics_collected":
            metric = metric.get("metrics")  # the envelope as LiveKit emits it
        if not isinstance(metric, dict) or not isinstance(metric.get("type"), str):
            errors.append(FieldError(pointer, 'must be a LiveKit metrics object with a "type"'))
            continue
        try:
            mapped = meter_catalogue.map_livekit_metric(metric)
        except meter_catalogue.MetricError as exc:
            errors.append(FieldError(f"{pointer}/{exc.field}", exc.detail))
            continue
        if mapped is None or not mapped.usage:
            ignored += 1  # vad/eou metrics, or a zero-usage report (e.g. a connection report): not billed
            continue
        try:
            timestamp = _unix_timestamp(metric.get("timestamp"))
        except ValueError as exc:
            errors.append(FieldError(f"{pointer}/timestamp", str(exc)))
            continue
        if problem := check_window(timestamp, now):
            errors.append(FieldError(f"{pointer}/timestamp", problem))
            continue
        provider = _text_field(mapped.provider, f"{pointer}/metadata/model_provider", 128, errors)
        model = _text_field(mapped.model, f"{pointer}/metadata/model_name", 128, errors)
        for name in ("request_id", "speech_id", "segment_id"):
            if metric.get(name) is not None and not isinstance(metric.get(name), str):
                errors.append(FieldError(f"{pointer}/{name}", "must be a string or null"))
        usage = _stored_usage(mapped, meter_codes, pointer, errors)
        if errors:
            continue
        metadata = {"livekit_type": metric["type"]}
        if metric.get("cancelled"):
            metadata["cancelled"] = True
        metadata.update({f"gap_{k}": v for k, v in mapped.flags.items()})
        record = EventRecord(
            index,
            _metric_event_id(session_id, metric),
            timestamp,
            session_id,
            provider,
            model,
            usage,
            metadata,
            "livekit_metrics",
        )
        records.append(record)
        if len(errors) >= MAX_ERRORS_REPORTED:
            break
    if errors:
        raise IngestError(errors)
    batch = dedupe_within_batch(records, "/metrics")
    batch.ignored, batch.session_id = ignored, session_id
    return batch


def validate_livekit_usage(payload: Any, agent_id: int, meter_codes: frozenset[str], now: datetime) -> Batch:
    """Validate ``POST /api/v1/livekit/usage`` (``AgentSession.usage`` at shutdown).

    The report's events get ids derived from (session, provider, model, kind) and a payload hash that
    leaves the receipt time out, so resending the same report is a duplicate and a different one a conflict.
    """
    if not isinstance(payload, dict):
        raise IngestError([FieldError("", "the body must be a JSON object")], 400)
    errors: list[FieldError] = []
    session_id = _livekit_session_id(payload, errors)
    entries = payload.get("usage")
    if isinstance(entries, dict) and isinstance(entries.get("model_usage"), list):
        entries = entries["model_usage"]  # AgentSessionUsage / session_usage_updated's "usage"
    if not isinstance(entries, list) or not 1 <= len(entries) <= 100:
        errors.append(FieldError("/usage", "must be a list of 1–100 LiveKit ModelUsage objects"))
        raise IngestError(errors)
    timestamp = now
    if payload.get("timestamp") is not None:
        try:
            timestamp = parse_timestamp(payload["timestamp"])
        except ValueError as exc:
            errors.append(FieldError("/timestamp", str(exc)))
        else:
            if problem := check_window(timestamp, now):
                errors.append(FieldError("/timestamp", problem))
    records = []
    ignored = 0
    for index, entry in enumerate(entries):
        pointer = f"/usage/{index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            errors.append(FieldError(pointer, 'must be a LiveKit ModelUsage object with a "type"'))
            continue
        try:
            mapped = meter_catalogue.map_livekit_model_usage(entry)
        except meter_catalogue.MetricError as exc:
            errors.append(FieldError(f"{pointer}/{exc.field}", exc.detail))
            continue
        if mapped is None or not mapped.usage:
            ignored += 1
            continue
        provider = _text_field(mapped.provider, f"{pointer}/provider", 128, errors)
        model = _text_field(mapped.model, f"{pointer}/model", 128, errors)
        usage = _stored_usage(mapped, meter_codes, pointer, errors)
        if errors:
            continue
        digest = hashlib.sha256(
            json.dumps([session_id, entry["type"], provider, model]).encode()
        ).hexdigest()[:40]
        metadata = {"livekit_type": entry["type"], **{f"gap_{k}": v for k, v in mapped.flags.items()}}
        record = EventRecord(
            index, f"lku:{digest}", timestamp, session_id, provider, model, usage, metadata, "livekit_usage"
        )
        records.append(record)
    if errors:
        raise IngestError(errors)
    batch = dedupe_within_batch(records, "/usage")
    batch.ignored, batch.session_id = ignored, session_id
    return batch


# --- storage ----------------------------------------------------------------------------------------------

_INSERT_SQL = """
WITH incoming AS (
    SELECT e->>0 AS event_id, (e->>1)::timestamptz AS ts, e->>2 AS session_id, e->>3 AS provider, e->>4 AS model,
           e->5 AS usage, e->6 AS metadata
    FROM jsonb_array_elements(%(rows)s::jsonb) AS e
),
new_sessions AS (
    INSERT INTO usage_session (tenant_id, agent_id, session_id, end_user_id, conversation_type, metadata,
                               livekit_report_mode, created_at, updated_at)
    SELECT DISTINCT %(tenant)s, %(agent)s, session_id, '', '', '{}'::jsonb, %(mode)s, now(), now()
    FROM incoming WHERE session_id <> '' ORDER BY 3
    ON CONFLICT (tenant_id, session_id) DO NOTHING
),
inserted AS (
    INSERT INTO usage_usageevent (tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage,
                                  metadata, source, received_at)
    SELECT %(tenant)s, %(agent)s, event_id, ts, session_id, provider, model, usage, metadata, %(source)s, now()
    FROM incoming ORDER BY event_id
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING event_id, timestamp, session_id, provider, model, usage
),
grouped AS (
    SELECT i.session_id, u.key AS meter, i.provider, i.model, date_trunc('hour', i.timestamp, %(tz)s) AS hour,
           sum(u.value::numeric) AS quantity, count(*) AS event_count
    FROM inserted i CROSS JOIN LATERAL jsonb_each_text(i.usage) AS u
    GROUP BY 1, 2, 3, 4, 5
),
rolled_up AS (
    INSERT INTO usage_usagerollup (tenant_id, agent_id, session_id, meter, provider, model, hour, quantity,
                                   event_count)
    SELECT %(tenant)s, %(agent)s, session_id, meter, provider, model, hour, quantity, event_count
    FROM grouped ORDER BY 3, 4, 5, 6, 7
    ON CONFLICT (tenant_id, agent_id, session_id, meter, provider, model, hour) DO UPDATE
       SET quantity = usage_usagerollup.quantity + EXCLUDED.quantity,
           event_count = usage_usagerollup.event_count + EXCLUDED.event_count
),
agent_rolled_up AS (
    INSERT INTO usage_agentrollup (tenant_id, agent_id, meter, provider, model, hour, quantity, event_count)
    SELECT %(tenant)s, %(agent)s, meter, provider, model, hour, sum(quantity), sum(event_count)
    FROM grouped GROUP BY 3, 4, 5, 6 ORDER BY 3, 4, 5, 6
    ON CONFLICT (tenant_id, agent_id, meter, provider, model, hour) DO UPDATE
       SET quantity = usage_agentrollup.quantity + EXCLUDED.quantity,
           event_count = usage_agentrollup.event_count + EXCLUDED.event_count
)
SELECT event_id FROM inserted
"""


def store_events(
    tenant: Tenant, agent: Agent, batch: Batch, *, session_mode: str = "", attempts: int = 3
) -> IngestResult:
    """Store validated records exactly once and roll them up; returns what happened to each.

    A ``session_mode`` ("metrics" or "usage") enforces DESIGN §4's rule that a LiveKit session is reported
    either per request or per model, never both (raises SessionModeConflict, nothing stored).
    """
    for attempt in range(attempts):
        try:
            with transaction.atomic():
                if session_mode:
                    _claim_session_mode(tenant, agent, batch.session_id, session_mode)
                result = _store(tenant, agent, batch.records, session_mode)
            result.duplicates += batch.repeats
            result.ignored = batch.ignored
            return result
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in _RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _claim_session_mode(tenant: Tenant, agent: Agent, session_id: str, mode: str) -> None:
    session, _ = Session.objects.get_or_create(
        tenant=tenant, session_id=session_id, defaults={"agent": agent, "livekit_report_mode": mode}
    )
    session = Session.objects.select_for_update().get(pk=session.pk)
    if session.livekit_report_mode and session.livekit_report_mode != mode:
        raise SessionModeConflict(session.livekit_report_mode)
    if not session.livekit_report_mode:
        Session.objects.filter(pk=session.pk).update(livekit_report_mode=mode)


# The ids an insert skipped are already stored: each is a duplicate if the stored event is the same one —
# same agent and endpoint, same timestamp (except for LiveKit usage reports, see EventRecord.identity),
# session, provider, model, usage and metadata (jsonb equality: key order and spacing do not matter, and
# quantities were stored canonical) — and a conflict otherwise. Only skipped ids pay for this comparison.
_DUPLICATES_SQL = """
SELECT s.event_id
FROM jsonb_array_elements(%(rows)s::jsonb) AS e
JOIN usage_usageevent s ON s.tenant_id = %(tenant)s AND s.event_id = e->>0
WHERE s.agent_id = %(agent)s AND s.source = %(source)s
  AND (s.timestamp = (e->>1)::timestamptz OR s.source = 'livekit_usage')
  AND s.session_id = e->>2 AND s.provider = e->>3 AND s.model = e->>4
  AND s.usage = e->5 AND s.metadata = e->6
"""


def _rows_json(records: Sequence[EventRecord]) -> str:
    # One JSON document of rows rather than eight arrays: quoting 1000-element arrays of JSON text in the
    # driver cost more than the INSERT itself (docs/performance.md); PostgreSQL parses this in C. orjson
    # writes it (aware datetimes as RFC 3339) in a tenth of the standard library's time.
    return orjson.dumps(
        [[r.event_id, r.timestamp, r.session_id, r.provider, r.model, r.usage, r.metadata] for r in records]
    ).decode()


def _store(tenant: Tenant, agent: Agent, records: Sequence[EventRecord], session_mode: str) -> IngestResult:
    if not records:
        return IngestResult()
    params = {
        "tenant": tenant.pk,
        "agent": agent.pk,
        "tz": tenant.timezone,
        "mode": session_mode,
        "source": records[0].source,
        "rows": _rows_json(records),
    }
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL, params)
        inserted = {row[0] for row in cursor.fetchall()}
        result = IngestResult(accepted=len(inserted))
        leftovers = [r for r in records if r.event_id not in inserted]
        if leftovers:
            cursor.execute(_DUPLICATES_SQL, {**params, "rows": _rows_json(leftovers)})
            same = {row[0] for row in cursor.fetchall()}
            for record in leftovers:
                if record.event_id in same:
                    result.duplicates += 1
                else:
                    result.conflicts.append({"index": record.index, "id": record.event_id})
    return result
