"""LiveKit's own shapes into usage events: ``POST /api/v1/livekit/metrics`` (per-request metrics objects as
``model_dump()`` gives them) and ``POST /api/v1/livekit/usage`` (``AgentSession.usage`` at shutdown).

The meter mapping itself is usage.meters (pure); this module validates the envelopes, derives stable event ids
and builds the same records as usage.validation, which ``usage.ingest.store_events`` stores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from usage import meters as meter_catalogue
from usage.validation import (
    IDENTIFIER_RULE,
    MAX_ERRORS_REPORTED,
    MAX_EVENTS_PER_BATCH,
    MAX_ID_LENGTH,
    Batch,
    EventRecord,
    FieldError,
    IngestError,
    check_window,
    dedupe_within_batch,
    is_identifier,
    parse_timestamp,
    stored_quantity,
    text_field,
)


def _livekit_session_id(payload: Mapping[str, Any], errors: list[FieldError]) -> str:
    """The conversation's id, in the identifier alphabet: LiveKit's job ids (``AJ_…``), room sids (``RM_…``)
    and room names such as ``dental-line-7f3a`` are in it."""
    value = payload.get("session_id")
    if not is_identifier(value):
        errors.append(
            FieldError(
                "/session_id", f"is required: the conversation's id, 1–{MAX_ID_LENGTH} {IDENTIFIER_RULE}"
            )
        )
        return ""
    return value


def _billable(
    obj: Any,
    pointer: str,
    noun: str,
    mapper: Callable[[Mapping[str, Any]], meter_catalogue.MappedUsage | None],
    errors: list[FieldError],
) -> tuple[meter_catalogue.MappedUsage | None, bool]:
    """(the usage one LiveKit object bills, whether it bills nothing): (None, True) for an object that bills
    nothing (VAD/EOU metrics, zero-usage reports); an invalid object appends its error and gives (None, False)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        errors.append(FieldError(pointer, f'must be a LiveKit {noun} object with a "type"'))
        return None, False
    try:
        mapped = mapper(obj)
    except meter_catalogue.MetricError as exc:
        errors.append(FieldError(f"{pointer}/{exc.field}", exc.detail))
        return None, False
    if mapped is None or not mapped.usage:
        return None, True
    return mapped, False


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
            usage[code] = stored_quantity(quantity)
        except ValueError as exc:
            errors.append(FieldError(pointer, f"{code} {exc}"))
    return usage


def validate_livekit_metrics(payload: Any, meter_codes: frozenset[str], now: datetime) -> Batch:
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
        mapped, bills_nothing = _billable(
            metric, pointer, "metrics", meter_catalogue.map_livekit_metric, errors
        )
        if mapped is None:
            ignored += bills_nothing
            continue
        try:
            timestamp = _unix_timestamp(metric.get("timestamp"))
        except ValueError as exc:
            errors.append(FieldError(f"{pointer}/timestamp", str(exc)))
            continue
        if problem := check_window(timestamp, now):
            errors.append(FieldError(f"{pointer}/timestamp", problem))
            continue
        provider = text_field(mapped.provider, f"{pointer}/metadata/model_provider", 128, errors)
        model = text_field(mapped.model, f"{pointer}/metadata/model_name", 128, errors)
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


def validate_livekit_usage(payload: Any, meter_codes: frozenset[str], now: datetime) -> Batch:
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
        mapped, bills_nothing = _billable(
            entry, pointer, "ModelUsage", meter_catalogue.map_livekit_model_usage, errors
        )
        if mapped is None:
            ignored += bills_nothing
            continue
        provider = text_field(mapped.provider, f"{pointer}/provider", 128, errors)
        model = text_field(mapped.model, f"{pointer}/model", 128, errors)
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
