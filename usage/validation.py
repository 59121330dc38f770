"""Validation of usage events: limits, canonical quantities, timestamps, metadata, and the ``POST
/api/v1/events`` batch (DESIGN §4).

Everything is checked before anything is written, so an invalid batch stores nothing. A batch's ordinary
events take a straight-line check (``plain_event``), anything unusual the full one (``validate_event``), which
also writes the error pointers; a test holds the first to the second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from usage.models import Meter

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

EVENT_FIELDS = frozenset(
    {"id", "timestamp", "session_id", "provider", "model", "usage", "metadata", "replaces"}
)
# The fields of an ordinary event (``plain_event``'s fast path); a correction takes the full validator.
PLAIN_EVENT_FIELDS = EVENT_FIELDS - {"replaces"}
# NUL cannot be stored by PostgreSQL; lone surrogates cannot be encoded as UTF-8. Refuse both up front.
UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
# The one alphabet of every identifier a client sends: event, session and end-user ids and metadata keys
# (docs/decisions/007-identifiers-and-write-isolation.md): ASCII letters, digits and . _ : @ + - (E.164
# numbers, SIP and e-mail-like ids, LiveKit's AJ_/RM_ ids pass), but not "." or "..", which a URL path
# cannot address. Always used with fullmatch: "$" would accept a trailing newline.
IDENTIFIER_CHARACTERS = "A-Za-z0-9._:@+-"
IDENTIFIER_RE = re.compile(rf"(?!\.\.?\Z)[{IDENTIFIER_CHARACTERS}]+")
IDENTIFIER_RULE = 'letters, digits and . _ : @ + - (not "." or "..")'
MAX_ID_LENGTH = 128
_RFC3339_RE = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_DECIMAL_STRING_RE = re.compile(r"[0-9]+(\.[0-9]+)?")
# Fast paths of the validation loop (a 1000-event batch runs it 1000 times): a plain int below these limits
# passes the full checks unchanged, so it skips them. Anything else takes the full checks.
_INT_QUANTITY_LIMIT = 10**MAX_SIGNIFICANT_DIGITS
# A quantity whose text is already canonical (what quantity_text(canonical_quantity(q)) returns) and within
# the limits: 1–9 integer digits and 1–6 decimals not ending in 0, or a positive integer of ≤ 15 digits. A
# JSON number parsed as Decimal keeps the literal's digits, so str() of it is tested the same way.
_CANONICAL_QUANTITY_RE = re.compile(r"(?:0|[1-9][0-9]{0,8})\.[0-9]{0,5}[1-9]|[1-9][0-9]{0,14}")
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


@dataclass(slots=True)
class EventRecord:
    """One validated event, ready to store. ``usage`` maps meter codes to canonical decimal strings;
    ``replaces`` is the id of the stored event it corrects ("" for none: docs/decisions/021)."""

    index: int
    event_id: str
    timestamp: datetime
    session_id: str
    provider: str
    model: str
    usage: dict[str, str]
    metadata: dict[str, Any]
    source: str
    replaces: str = ""

    def identity(self) -> str:
        """The payload as DESIGN §4 compares it ("an identical resend"), canonical: used to tell a repeat of
        an id inside one batch from a reuse. The stored copy is compared in SQL (``usage.ingest``) on the
        same fields. A LiveKit usage report's timestamp is its receipt time, so it is left out."""
        return _canonical_json(
            [
                self.timestamp.isoformat() if self.source != "livekit_usage" else None,
                self.session_id,
                self.provider,
                self.model,
                self.usage,
                self.metadata,
                self.replaces,
            ]
        )


@dataclass
class Batch:
    """A validated batch: the distinct records to store, and how many exact repeats the batch itself held."""

    records: list[EventRecord]
    repeats: int = 0
    ignored: int = 0
    session_id: str = ""


def active_meter_codes() -> frozenset[str]:
    return frozenset(Meter.objects.filter(is_active=True).values_list("code", flat=True))


def canonical_quantity(value: Any) -> Decimal:
    """A quantity as DESIGN §4 allows it: a JSON number or decimal string, finite, ≥ 0, ≤ 15 significant
    digits and ≤ 6 decimal places. Raises ValueError with the reason."""
    if isinstance(value, bool) or value is None:
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, str):
        if not _DECIMAL_STRING_RE.fullmatch(value):
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


def stored_quantity(value: Any) -> str:
    """``quantity_text(canonical_quantity(value))``: the text a quantity is stored as. Raises ValueError.

    An int within the limits, or a value whose text is already canonical, is that text: the full checks
    would return it unchanged. (A float prints as the literal's digits: usage.api.parsers.loads_fast.)
    """
    if type(value) is int and 0 <= value < _INT_QUANTITY_LIMIT:
        return str(value)
    if type(value) in (Decimal, str, float) and _CANONICAL_QUANTITY_RE.fullmatch(text := str(value)):
        return text
    return quantity_text(canonical_quantity(value))


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with a UTC offset, e.g. 2026-11-20T10:00:00Z")
    match = _RFC3339_RE.fullmatch(value)
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
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
        raise ValueError("is outside the representable range (years 0001–9999 in UTC)") from None


def check_window(timestamp: datetime, now: datetime) -> str | None:
    if timestamp < now - MAX_PAST:
        return "is more than 35 days in the past"
    if timestamp > now + MAX_FUTURE:
        return "is more than 5 minutes in the future"
    return None


def is_identifier(value: Any, max_length: int = MAX_ID_LENGTH) -> bool:
    """Whether ``value`` is an identifier a client may send (1–``max_length`` characters of the alphabet)."""
    return isinstance(value, str) and len(value) <= max_length and IDENTIFIER_RE.fullmatch(value) is not None


def identifier_field(
    value: Any, pointer: str, errors: list[FieldError], max_length: int = MAX_ID_LENGTH
) -> str:
    """An optional identifier (a session or end-user id); None and "" are "" (none). Appends an error
    otherwise."""
    if value is None or value == "":
        return ""
    if not is_identifier(value, max_length):
        errors.append(FieldError(pointer, f"must be 1–{max_length} characters: {IDENTIFIER_RULE}"))
        return ""
    return value


def text_field(
    value: Any, pointer: str, max_length: int, errors: list[FieldError], *, printable: bool = True
) -> str:
    """A string of at most ``max_length`` characters; None is "". Appends an error otherwise.

    Labels (provider, model, conversation type) must be printable: no control characters, line or paragraph
    separators, NUL or unpaired surrogates, since they are shown and grouped by on every page. Free text
    (``printable=False``: metadata values) only has to be storable."""
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(FieldError(pointer, "must be a string"))
        return ""
    if len(value) > max_length:
        errors.append(FieldError(pointer, f"must be at most {max_length} characters"))
    elif printable and not value.isprintable():
        errors.append(
            FieldError(pointer, "must not contain control characters, line breaks or unpaired surrogates")
        )
    elif UNSTORABLE_RE.search(value):
        errors.append(FieldError(pointer, "must not contain NUL characters or unpaired surrogates"))
    return value


def clean_metadata(value: Any, pointer: str, errors: list[FieldError]) -> dict[str, Any]:
    """Flat metadata as it is stored (numbers as int or float), or {} with errors appended under
    ``pointer``. Also used for a session's metadata."""
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
        if not is_identifier(key, MAX_METADATA_KEY_LENGTH):
            errors.append(
                FieldError(
                    f"{pointer}/{escape_pointer(str(key))}",
                    f"keys must be 1–{MAX_METADATA_KEY_LENGTH} characters: {IDENTIFIER_RULE}",
                )
            )
            continue
        # fast paths: a short storable string or a small int is stored as it is
        if type(item) is str and len(item) <= MAX_METADATA_VALUE_LENGTH and not UNSTORABLE_RE.search(item):
            clean[key] = item
            continue
        if type(item) is int and abs(item) < _METADATA_INT_LIMIT:
            clean[key] = item
            continue
        item_pointer = f"{pointer}/{escape_pointer(key)}"
        if isinstance(item, str):
            text_field(item, item_pointer, MAX_METADATA_VALUE_LENGTH, errors, printable=False)
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


def escape_pointer(token: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def validate_event_batch(payload: Any, meter_codes: frozenset[str], now: datetime) -> Batch:
    """Validate a ``POST /api/v1/events`` body into records, or raise IngestError naming every bad field."""
    if not isinstance(payload, dict):
        raise IngestError([FieldError("", 'the body must be a JSON object with an "events" list')], 400)
    unknown = sorted(set(payload) - {"events"})
    errors = [FieldError(f"/{escape_pointer(k)}", "unknown field") for k in unknown]
    events = payload.get("events")
    if not isinstance(events, list):
        raise IngestError([*errors, FieldError("/events", "must be a list of 1–1000 events")])
    if not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise IngestError(
            [*errors, FieldError("/events", f"must hold 1–{MAX_EVENTS_PER_BATCH} events, not {len(events)}")]
        )
    records = []
    earliest, latest = now - MAX_PAST, now + MAX_FUTURE
    known: set[str] = set()
    for index, event in enumerate(events):
        record = plain_event(event, index, meter_codes, earliest, latest, known)
        if record is None:
            record = validate_event(event, f"/events/{index}", index, meter_codes, now, errors)
        if record is not None:
            records.append(record)
        if len(errors) >= MAX_ERRORS_REPORTED:
            break
    if errors:
        raise IngestError(errors)
    batch = dedupe_within_batch(records, "/events")
    check_replacements_within_batch(batch.records, "/events")
    return batch


def _plain(text: Any, limit: int) -> bool:
    """A short printable ASCII string: a valid label or metadata value as it is (isascii is O(1) in
    CPython, isprintable one pass in C)."""
    return type(text) is str and len(text) <= limit and text.isascii() and text.isprintable()


def plain_event(
    event: Any,
    index: int,
    meter_codes: frozenset[str],
    earliest: datetime,
    latest: datetime,
    known: set[str] | None = None,
) -> EventRecord | None:
    """The record of an event that is valid in the common way — ASCII text, a valid timestamp, integer or
    canonical quantities, string or integer metadata — as ``validate_event`` would build it, or None to
    let ``validate_event`` decide (and report errors). Straight-line checks with no error pointers and no
    calls per field: a 1000-event batch runs this 1000 times (the quantity check is ``stored_quantity``'s
    shortcut, inlined). ``known`` holds the session ids and metadata keys of the batch already matched
    against the identifier alphabet: a batch repeats them, so each is matched once."""
    if type(event) is not dict or not PLAIN_EVENT_FIELDS.issuperset(event):
        return None
    if known is None:
        known = set()
    event_id, stamp = event.get("id"), event.get("timestamp")
    if type(event_id) is not str or len(event_id) > MAX_ID_LENGTH or not IDENTIFIER_RE.fullmatch(event_id):
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
    if type(session_id) is not str or not (_plain(provider, 128) and _plain(model, 128)):
        return None
    if session_id and session_id not in known:
        if len(session_id) > MAX_ID_LENGTH or not IDENTIFIER_RE.fullmatch(session_id):
            return None
        known.add(session_id)
    metadata = event.get("metadata")
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict or len(metadata) > MAX_METADATA_KEYS:
        return None
    for key, item in metadata.items():
        if len(key) > MAX_METADATA_KEY_LENGTH:
            return None
        if key not in known:
            if not IDENTIFIER_RE.fullmatch(key):
                return None
            known.add(key)
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
        elif type(value) in (float, Decimal, str) and _CANONICAL_QUANTITY_RE.fullmatch(text := str(value)):
            usage[code] = text
        else:
            return None
    return EventRecord(index, event_id, timestamp, session_id, provider, model, usage, dict(metadata), "api")


def validate_event(
    event: Any,
    pointer: str,
    index: int,
    meter_codes: frozenset[str],
    now: datetime,
    errors: list[FieldError],
) -> EventRecord | None:
    """The record of one event of a batch, or None with every problem appended to ``errors``."""
    if not isinstance(event, dict):
        errors.append(FieldError(pointer, "must be an object"))
        return None
    before = len(errors)
    for key in event.keys() - EVENT_FIELDS:
        errors.append(FieldError(f"{pointer}/{escape_pointer(key)}", "unknown field"))
    event_id = event.get("id")
    if not is_identifier(event_id):
        errors.append(
            FieldError(f"{pointer}/id", f"is required: 1–{MAX_ID_LENGTH} characters: {IDENTIFIER_RULE}")
        )
    timestamp = None
    try:
        timestamp = parse_timestamp(event.get("timestamp"))
    except ValueError as exc:
        errors.append(FieldError(f"{pointer}/timestamp", str(exc)))
    else:
        if problem := check_window(timestamp, now):
            errors.append(FieldError(f"{pointer}/timestamp", problem))
    session_id = identifier_field(event.get("session_id"), f"{pointer}/session_id", errors)
    replaces = identifier_field(event.get("replaces"), f"{pointer}/replaces", errors)
    if replaces and replaces == event_id:
        errors.append(FieldError(f"{pointer}/replaces", "must name another event than this one"))
    provider = text_field(event.get("provider"), f"{pointer}/provider", 128, errors)
    model = text_field(event.get("model"), f"{pointer}/model", 128, errors)
    metadata = clean_metadata(event.get("metadata"), f"{pointer}/metadata", errors)
    usage_in = event.get("usage")
    usage: dict[str, str] = {}
    if not isinstance(usage_in, dict) or not usage_in:
        errors.append(
            FieldError(f"{pointer}/usage", "is required: an object of meter code → quantity (≥ 1 entry)")
        )
    else:
        for code, value in usage_in.items():
            if code not in meter_codes:
                errors.append(FieldError(f"{pointer}/usage/{escape_pointer(code)}", "unknown meter code"))
                continue
            try:
                usage[code] = stored_quantity(value)
            except ValueError as exc:
                errors.append(FieldError(f"{pointer}/usage/{escape_pointer(code)}", str(exc)))
    if len(errors) > before:
        return None
    return EventRecord(
        index, event_id, timestamp, session_id, provider, model, usage, metadata, "api", replaces
    )


def check_replacements_within_batch(records: list[EventRecord], pointer_base: str) -> None:
    """What a batch's ``replaces`` can be refused for without the database: naming an event of the same batch
    (a correction corrects what is stored; send the corrected event instead), or an event another event of the
    batch already replaces (one event has one correction). Raises IngestError."""
    ids = {record.event_id for record in records}
    corrected: dict[str, EventRecord] = {}
    errors = []
    for record in records:
        if not record.replaces:
            continue
        pointer = f"{pointer_base}/{record.index}/replaces"
        if record.replaces in ids:
            errors.append(FieldError(pointer, "names an event of this batch: send the corrected event alone"))
        elif (first := corrected.setdefault(record.replaces, record)) is not record:
            errors.append(
                FieldError(pointer, f"names the event {pointer_base}/{first.index} already replaces")
            )
    if errors:
        raise IngestError(errors)


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
