"""Everything the sync and async clients share and that does no I/O: payloads, batching, response handling."""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

API_PREFIX = "/api/v1"
KEY_RE = re.compile(r"mlk_live_([0-9a-f]{12})_([0-9A-Za-z]{43})")  # fullmatch
# The server's one alphabet for identifiers (event, session and end-user ids, metadata keys), checked here
# with a full match so a bad id fails in the caller's code rather than as a refused batch in the spool.
IDENTIFIER_RE = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._:@+-]+")
IDENTIFIER_RULE = 'letters, digits and . _ : @ + - (not "." or "..")'
MAX_ID_LENGTH = 128
MAX_METADATA_KEY_LENGTH = 40

# Server limits (DESIGN §4): 1–1000 events per batch, body ≤ 1 MiB. A margin is kept for the envelope.
MAX_ITEMS_PER_REQUEST = 1000
MAX_BODY_BYTES = 1024 * 1024
BODY_BUDGET = MAX_BODY_BYTES - 4096
MAX_USAGE_ENTRIES = 100

# How a response status is handled.
DELIVERED, RETRY, KEEP, REJECT = "delivered", "retry", "keep", "reject"
# Statuses that say the client is misconfigured (key, URL), not that the data is bad: the batch stays in the
# spool, the call raises, nothing is retried automatically within the call.
KEEP_STATUSES = frozenset({401, 403, 404, 405, 406, 407, 415})
# Of those, the ones that fail every request alike: delivery stops at the first one instead of sending the
# rest of the spool only to be refused the same way.
STOP_STATUSES = frozenset({401, 403, 407})
# Retried with backoff (408 and 429 are the two 4xx where a retry is the right answer).
RETRY_4XX = frozenset({408, 429})
# Problem types of a correction that names an event the key may never correct (unknown, or another agent's):
# refused for good like a bad batch, not "the setup is wrong" as other 403/404 answers are.
REFUSED_CORRECTIONS = frozenset({"event-not-found", "event-of-another-agent"})
_POINTER_INDEX_RE = re.compile(r"/(events|metrics|usage)/(\d+)(?:/|\Z)")


def classify(status: int, problem: Mapping[str, Any] | None = None) -> str:
    if 200 <= status < 300:
        return DELIVERED
    if status in RETRY_4XX or status >= 500:
        return RETRY
    if status in KEEP_STATUSES and not (
        status in (403, 404) and problem_type(problem) in REFUSED_CORRECTIONS
    ):
        return KEEP
    return REJECT


def problem_type(problem: Mapping[str, Any] | None) -> str:
    """The last segment of a problem's ``type`` ("" when there is none)."""
    kind = problem.get("type") if isinstance(problem, Mapping) else None
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else ""


def parse_key(api_key: str) -> str:
    """The public key id of a well-formed key; ValueError otherwise (never echoes the secret)."""
    match = KEY_RE.fullmatch(api_key or "")
    if not match:
        raise ValueError("api_key must look like mlk_live_<12 hex>_<43 letters/digits>")
    return match.group(1)


def normalize_base_url(base_url: str) -> str:
    base = base_url.strip().rstrip("/")
    if not re.match(r"^https?://", base):
        raise ValueError("base_url must start with http:// or https://")
    if base.endswith(API_PREFIX):
        base = base[: -len(API_PREFIX)]
    return base


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("quantities must be finite")
        return format(value, "f")  # the API takes decimal strings, so no precision is lost
    if isinstance(value, datetime):
        return rfc3339(value)
    if hasattr(value, "model_dump"):  # pydantic models (LiveKit metrics and usage)
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    # allow_nan=False: the server refuses NaN/Infinity, and one would reject a whole batch.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default)


def rfc3339(value: datetime | float | int | str) -> str:
    """RFC 3339 with an explicit offset, as the API requires. Naive datetimes are refused, not guessed."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("datetimes must be timezone-aware (the API needs an explicit UTC offset)")
        return value.isoformat()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("timestamps must be aware datetimes, unix seconds or RFC 3339 strings")
    return datetime.fromtimestamp(float(value), tz=timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: UP017


def finite_json(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become null (LiveKit can report inf for rates on 0-length runs)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def to_plain(obj: Any) -> Any:
    """A LiveKit pydantic object (or an event carrying one) as the JSON ``model_dump`` gives; dicts pass."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return finite_json(obj)


@dataclass
class IngestResult:
    """What the server did with the items of one call (summed over its batches).

    ``spooled`` counts items not delivered yet because the server could not be reached (or kept refusing
    with 429/5xx): they are safe in the spool and will be resent by ``flush()`` or by the next client started
    with the same spool directory and key. ``rejected`` counts items the server refused for good (moved to the
    spool's ``rejected/`` directory; only the background sender splits bad items out of a batch).
    """

    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    conflicting_events: list[dict[str, Any]] = field(default_factory=list)
    # Events of the call that corrected one sent before (``replaces``) and were stored by it: ``[{index, id,
    # replaces}]``, indexes into your list. A resent replacement counts as a duplicate and is not listed again.
    replacements: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    # Usage the server stored but no price of the plan matches (meter, provider, model, events, reason): it is
    # not billed until a price covers it. One entry per group, events added up over the requests sent.
    unpriced: list[dict[str, Any]] = field(default_factory=list)
    spooled: int = 0
    rejected: int = 0

    @property
    def delivered(self) -> bool:
        return self.spooled == 0

    def add(self, body: Mapping[str, Any], offset: int = 0, index_map: list[int] | None = None) -> None:
        self.accepted += _int(body.get("accepted"))
        self.duplicates += _int(body.get("duplicates"))
        self.conflicts += _int(body.get("conflicts"))
        self.ignored += _int(body.get("ignored"))
        for name in ("conflicting_events", "replacements"):
            for item in body.get(name) or []:
                if isinstance(item, Mapping):
                    index = item.get("index")
                    if isinstance(index, int):
                        if index_map is not None and 0 <= index < len(index_map):
                            index = index_map[index]
                        index += offset
                    getattr(self, name).append({**item, "index": index})
        self._add_unpriced(body.get("unpriced") or [])

    def _add_unpriced(self, items: Any) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, Mapping):
                continue
            group = {k: item.get(k) for k in ("meter", "provider", "model", "reason")}
            known = next((u for u in self.unpriced if all(u.get(k) == v for k, v in group.items())), None)
            if known is None:
                self.unpriced.append({**group, "events": _int(item.get("events"))})
            else:
                known["events"] += _int(item.get("events"))

    def merge(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.conflicting_events.extend(other.conflicting_events)
        self.replacements.extend(other.replacements)
        self._add_unpriced(other.unpriced)
        self.ignored += other.ignored
        self.spooled += other.spooled
        self.rejected += other.rejected


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass
class FlushResult:
    """Outcome of resending the spool: counts of requests (batches), and the summed ingestion result."""

    delivered: int = 0
    rejected: int = 0
    pending: int = 0
    result: IngestResult = field(default_factory=IngestResult)


@dataclass
class PreparedRequest:
    """One HTTP request, ready to spool and send. ``body`` is the exact JSON text sent on every attempt, so a
    resend is byte-identical (LiveKit metric ids are derived server-side from these very numbers)."""

    method: str
    path: str
    body: str | None
    kind: str
    items: int = 0
    items_key: str = ""  # "events" / "metrics" / "usage": the list the server's error pointers index
    split_invalid: bool = False  # background sends: drop items the server points at, send the rest
    offset: int = 0  # index of the first item in the caller's list (to map conflict indexes back)
    created_at: float = field(default_factory=time.time)

    def to_record(self) -> dict[str, Any]:
        return {
            "v": 1,
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "kind": self.kind,
            "items": self.items,
            "items_key": self.items_key,
            "split_invalid": self.split_invalid,
            "created_at": self.created_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PreparedRequest:
        if record.get("v") != 1 or not isinstance(record.get("path"), str):
            raise ValueError("not a meterline spool record (version 1)")
        return cls(
            method=str(record["method"]),
            path=record["path"],
            body=record.get("body"),
            kind=str(record.get("kind", "")),
            items=int(record.get("items") or 0),
            items_key=str(record.get("items_key") or ""),
            split_invalid=bool(record.get("split_invalid")),
            created_at=float(record.get("created_at") or 0.0),
        )


def _chunks(encoded: list[str], envelope_bytes: int, max_items: int) -> list[tuple[int, list[str]]]:
    """Split encoded items into (offset, items) chunks that respect the item and body-size limits."""
    chunks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    size = envelope_bytes
    start = 0
    for index, text in enumerate(encoded):
        item_bytes = len(text.encode()) + 1
        if envelope_bytes + item_bytes > BODY_BUDGET:
            raise ValueError(f"item {index} alone is larger than the API's 1 MiB body limit")
        if current and (len(current) >= max_items or size + item_bytes > BODY_BUDGET):
            chunks.append((start, current))
            current, size, start = [], envelope_bytes, index
        current.append(text)
        size += item_bytes
    if current:
        chunks.append((start, current))
    return chunks


def _envelope(prefix_fields: Mapping[str, Any], items_key: str, items: list[str]) -> str:
    head = dumps(dict(prefix_fields))[:-1]
    sep = "," if prefix_fields else ""
    return f"{head}{sep}{dumps(items_key)}:[{','.join(items)}]}}"


def new_event_id() -> str:
    return f"ml-{uuid.uuid4().hex}"


def check_identifier(value: Any, name: str, max_length: int = MAX_ID_LENGTH) -> None:
    """ValueError naming ``name`` unless ``value`` is an identifier the API accepts."""
    if not (isinstance(value, str) and len(value) <= max_length and IDENTIFIER_RE.fullmatch(value)):
        raise ValueError(f"{name} {value!r} is not a valid identifier: 1–{max_length} {IDENTIFIER_RULE}")


def check_event_identifiers(event: Mapping[str, Any], name: str = "event") -> None:
    """The identifiers of one event (id, session id, metadata keys), as the API will check them."""
    if event.get("id") is not None:
        check_identifier(event["id"], f"{name} id")
    if event.get("replaces") is not None:
        check_identifier(event["replaces"], f"{name} replaces")
    if event.get("session_id"):
        check_identifier(event["session_id"], f"{name} session_id")
    metadata = event.get("metadata")
    if isinstance(metadata, Mapping):
        for key in metadata:
            check_identifier(key, f"{name} metadata key", MAX_METADATA_KEY_LENGTH)


def prepare_event(event: Any, name: str = "event") -> dict[str, Any]:
    if hasattr(event, "to_dict"):
        event = event.to_dict()
    if not isinstance(event, Mapping):
        raise TypeError("events must be mappings (or meterline.Event)")
    check_event_identifiers(event, name)
    body = {k: v for k, v in event.items() if v is not None}
    body.setdefault("id", new_event_id())
    if "timestamp" not in body:
        body["timestamp"] = datetime.now(timezone.utc)  # noqa: UP017
    body["timestamp"] = rfc3339(body["timestamp"])
    usage = body.get("usage")
    if isinstance(usage, Mapping):
        body["usage"] = {k: _quantity(v) for k, v in usage.items()}
    return body


def _quantity(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("quantities must be finite")
    return value


def prepare_events(events: Iterable[Any], *, split_invalid: bool = False) -> list[PreparedRequest]:
    bodies = [prepare_event(e, f"events[{index}]") for index, e in enumerate(events)]
    if not bodies:
        raise ValueError("send at least one event")
    encoded = [dumps(b) for b in bodies]
    envelope = len(_envelope({}, "events", []).encode())
    return [
        PreparedRequest(
            "POST",
            f"{API_PREFIX}/events",
            _envelope({}, "events", chunk),
            "events",
            len(chunk),
            "events",
            split_invalid,
            offset,
        )
        for offset, chunk in _chunks(encoded, envelope, MAX_ITEMS_PER_REQUEST)
    ]


def unwrap_metric(metric: Any) -> Any:
    """A metrics object from a ``metrics_collected`` event (object or dump), or the metric itself."""
    if isinstance(metric, Mapping):
        if metric.get("type") == "metrics_collected" and "metrics" in metric:
            return metric["metrics"]
        return metric
    inner = getattr(metric, "metrics", None)
    if inner is not None and getattr(metric, "type", None) == "metrics_collected":
        return inner
    return metric


def prepare_livekit_metrics(
    session_id: str, metrics: Iterable[Any], *, split_invalid: bool = False
) -> list[PreparedRequest]:
    _check_session_id(session_id)
    dumped = [to_plain(unwrap_metric(m)) for m in metrics]
    if not dumped:
        raise ValueError("send at least one metrics object")
    encoded = [dumps(m) for m in dumped]
    prefix = {"session_id": session_id}
    envelope = len(_envelope(prefix, "metrics", []).encode())
    return [
        PreparedRequest(
            "POST",
            f"{API_PREFIX}/livekit/metrics",
            _envelope(prefix, "metrics", chunk),
            "livekit_metrics",
            len(chunk),
            "metrics",
            split_invalid,
            offset,
        )
        for offset, chunk in _chunks(encoded, envelope, MAX_ITEMS_PER_REQUEST)
    ]


def usage_entries(usage: Any) -> list[Any]:
    """The per-model entries of ``AgentSession.usage``, a ``session_usage_updated`` event, or a list."""
    if isinstance(usage, Mapping):
        if usage.get("type") == "session_usage_updated":
            usage = usage.get("usage")
        if isinstance(usage, Mapping) and "model_usage" in usage:
            usage = usage["model_usage"]
    else:
        if getattr(usage, "type", None) == "session_usage_updated":
            usage = usage.usage
        if hasattr(usage, "model_usage"):
            usage = usage.model_usage
    if isinstance(usage, Mapping) or not isinstance(usage, Iterable):
        raise TypeError(
            "usage must be AgentSession.usage, a session_usage_updated event or a list of ModelUsage"
        )
    return list(usage)


def prepare_livekit_usage(
    session_id: str, usage: Any, *, timestamp: Any = None, split_invalid: bool = False
) -> PreparedRequest:
    _check_session_id(session_id)
    entries = [to_plain(u) for u in usage_entries(usage)]
    if not entries:
        raise ValueError("the usage report has no model entries")
    if len(entries) > MAX_USAGE_ENTRIES:
        raise ValueError(f"a usage report holds at most {MAX_USAGE_ENTRIES} model entries")
    # The timestamp is fixed when the report is made, so a resend from the spool is byte-identical.
    when = rfc3339(timestamp if timestamp is not None else datetime.now(timezone.utc))  # noqa: UP017
    body = _envelope({"session_id": session_id, "timestamp": when}, "usage", [dumps(e) for e in entries])
    if len(body.encode()) > BODY_BUDGET:
        raise ValueError("the usage report is larger than the API's 1 MiB body limit")
    return PreparedRequest(
        "POST", f"{API_PREFIX}/livekit/usage", body, "livekit_usage", len(entries), "usage", split_invalid
    )


SESSION_FIELDS = ("started_at", "ended_at", "end_user_id", "conversation_type", "metadata", "default_models")
# The kinds of usage a session's default models name (the server applies them to events that name no model).
DEFAULT_MODEL_KINDS = ("llm", "stt", "tts")


def prepare_session(session_id: str, fields: Mapping[str, Any]) -> PreparedRequest:
    _check_session_id(session_id)
    body: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in SESSION_FIELDS:
            raise TypeError(f"unknown session field {name!r}")
        if name in ("started_at", "ended_at") and value is not None:
            value = rfc3339(value)
        if name == "end_user_id" and value != "":
            check_identifier(value, "end_user_id")
        if name == "default_models":
            if (
                not isinstance(value, Mapping)
                or not set(value) <= set(DEFAULT_MODEL_KINDS)
                or not all(isinstance(n, Mapping) and {"provider", "model"} <= set(n) for n in value.values())
            ):
                raise ValueError(
                    f"default_models maps some of {', '.join(DEFAULT_MODEL_KINDS)} to {{'provider', 'model'}}"
                )
            value = {kind: {"provider": n["provider"], "model": n["model"]} for kind, n in value.items()}
        if name == "metadata" and isinstance(value, Mapping):
            for key in value:
                check_identifier(key, "metadata key", MAX_METADATA_KEY_LENGTH)
        body[name] = value
    from urllib.parse import quote

    return PreparedRequest(
        "PUT", f"{API_PREFIX}/sessions/{quote(session_id, safe='')}", dumps(body), "session", 1
    )


def prepare_budget() -> PreparedRequest:
    return PreparedRequest("GET", f"{API_PREFIX}/budget", None, "budget")


def prepare_balance() -> PreparedRequest:
    return PreparedRequest("GET", f"{API_PREFIX}/balance", None, "balance")


def prepare_authorize(
    session_id: str, amount: Any = None, expected_seconds: Any = None, ttl_seconds: int | None = None
) -> PreparedRequest:
    """POST /api/v1/authorizations: a hold of ``amount`` or of ``expected_seconds`` of the tenant's calls."""
    _check_session_id(session_id)
    if (amount is None) == (expected_seconds is None):
        raise TypeError("give either amount or expected_seconds")
    body: dict[str, Any] = {"session_id": session_id}
    if amount is not None:
        body["amount"] = str(Decimal(str(amount)))
    else:
        body["expected_seconds"] = str(Decimal(str(expected_seconds)))
    if ttl_seconds is not None:
        body["ttl_seconds"] = int(ttl_seconds)
    return PreparedRequest("POST", f"{API_PREFIX}/authorizations", dumps(body), "authorize")


def prepare_hold_action(
    hold_id: int, action: str, ttl_seconds: int | None = None, amount: Any = None
) -> PreparedRequest:
    """POST /api/v1/authorizations/{id}/extend or /release."""
    if action not in ("extend", "release") or isinstance(hold_id, bool) or not isinstance(hold_id, int):
        raise TypeError("hold_id must be the int id an authorization answered with")
    body: dict[str, Any] = {}
    if ttl_seconds is not None:
        body["ttl_seconds"] = int(ttl_seconds)
    if amount is not None:
        body["amount"] = str(Decimal(str(amount)))
    return PreparedRequest("POST", f"{API_PREFIX}/authorizations/{hold_id}/{action}", dumps(body), action)


MAX_REASON_LENGTH = 500


def prepare_retract(event_id: str, reason: str | None = None) -> PreparedRequest:
    """POST /api/v1/events/{id}/retract. The body is fixed here, so a resend from the spool is the same request,
    which the server answers as the first (a retraction is idempotent)."""
    from urllib.parse import quote

    check_identifier(event_id, "event_id")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH):
        raise ValueError(f"reason must be text of at most {MAX_REASON_LENGTH} characters")
    body = dumps({"reason": reason} if reason is not None else {})
    return PreparedRequest(
        "POST", f"{API_PREFIX}/events/{quote(event_id, safe='')}/retract", body, "retract", 1
    )


def prepare_session_read(session_id: str) -> PreparedRequest:
    """GET /api/v1/sessions/{id}: any id the server stored (percent-encoded), not only the write alphabet."""
    from urllib.parse import quote

    if not isinstance(session_id, str) or not session_id:
        raise TypeError("session_id must be a non-empty string")
    return PreparedRequest("GET", f"{API_PREFIX}/sessions/{quote(session_id, safe='')}", None, "session_read")


def _check_session_id(session_id: Any) -> None:
    check_identifier(session_id, "session_id")


def split_out_invalid(
    request: PreparedRequest, problem: Mapping[str, Any]
) -> tuple[PreparedRequest, list[Any], list[int]] | None:
    """For a 400/422 whose errors all point at items of the batch: (the request without those items,
    the refused items, the kept items' indexes in the original). None when the errors are not per item or
    every item is refused."""
    if not request.items_key or request.body is None:
        return None
    errors = problem.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    bad: set[int] = set()
    for error in errors:
        match = _POINTER_INDEX_RE.match(str(error.get("pointer", ""))) if isinstance(error, Mapping) else None
        if not match or match.group(1) != request.items_key:
            return None
        bad.add(int(match.group(2)))
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    items = body.get(request.items_key)
    if not isinstance(items, list) or not bad or bad.issuperset(range(len(items))) or max(bad) >= len(items):
        return None
    kept_indexes = [i for i in range(len(items)) if i not in bad]
    body[request.items_key] = [items[i] for i in kept_indexes]
    refused = [items[i] for i in sorted(bad)]
    smaller = PreparedRequest(
        request.method,
        request.path,
        dumps(body),
        request.kind,
        len(kept_indexes),
        request.items_key,
        request.split_invalid,
        request.offset,
        request.created_at,
    )
    return smaller, refused, kept_indexes


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter: a random delay in [d/2, d], d = min(max, base·2^attempt)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return (rng or random).uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)  # noqa: UP017
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def problem_of(response_json: Any) -> dict[str, Any]:
    return response_json if isinstance(response_json, dict) else {}


def default_spool_root() -> str:
    configured = os.environ.get("METERLINE_SPOOL_DIR")
    if configured:
        return configured
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "meterline", "spool")
