"""The meter catalogue and the LiveKit → meter mapping (DESIGN §3). Pure functions, no database.

Meters are disjoint: pricing each and adding never counts a token twice. LiveKit reports cached tokens as
a subset of input tokens (and Anthropic cache writes inside ``prompt_tokens``), so every mapping below
subtracts before it assigns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# (code, unit, description): the catalogue the seed migration installs.
DEFAULT_METERS: list[tuple[str, str, str]] = [
    ("llm_input_text_tokens", "token", "uncached text input"),
    ("llm_input_cached_text_tokens", "token", "text input read from the prompt cache"),
    ("llm_input_cache_write_tokens", "token", "input written to the prompt cache (Anthropic)"),
    ("llm_input_audio_tokens", "token", "uncached audio input (realtime models)"),
    ("llm_input_cached_audio_tokens", "token", "cached audio input"),
    ("llm_input_image_tokens", "token", "image input (uncached + cached together)"),
    ("llm_output_text_tokens", "token", "text output, reasoning included"),
    ("llm_output_audio_tokens", "token", "audio output"),
    ("stt_audio_seconds", "second", "audio sent to speech-to-text"),
    ("stt_input_tokens", "token", "token-billed speech-to-text input"),
    ("stt_output_tokens", "token", "token-billed speech-to-text output"),
    ("tts_characters", "character", "characters synthesized"),
    ("tts_audio_seconds", "second", "audio produced by text-to-speech"),
    ("tts_input_tokens", "token", "token-billed text-to-speech input"),
    ("tts_output_tokens", "token", "token-billed text-to-speech output"),
    ("realtime_session_seconds", "second", "connection time of session-billed realtime models"),
    ("session_seconds", "second", "conversation length (for per-minute platform pricing)"),
]

# What each meter is called wherever a person reads it (the portal, invoices); its code stays in CSVs, the API
# and on hover. Staff can rename a meter in the admin (Meter.name); these are the catalogue's names.
METER_NAMES: dict[str, str] = {
    "llm_input_text_tokens": "LLM text input tokens",
    "llm_input_cached_text_tokens": "LLM cached text input tokens",
    "llm_input_cache_write_tokens": "LLM prompt-cache write tokens",
    "llm_input_audio_tokens": "LLM audio input tokens",
    "llm_input_cached_audio_tokens": "LLM cached audio input tokens",
    "llm_input_image_tokens": "LLM image input tokens",
    "llm_output_text_tokens": "LLM text output tokens",
    "llm_output_audio_tokens": "LLM audio output tokens",
    "stt_audio_seconds": "Speech-to-text audio seconds",
    "stt_input_tokens": "Speech-to-text input tokens",
    "stt_output_tokens": "Speech-to-text output tokens",
    "tts_characters": "Text-to-speech characters",
    "tts_audio_seconds": "Text-to-speech audio seconds",
    "tts_input_tokens": "Text-to-speech input tokens",
    "tts_output_tokens": "Text-to-speech output tokens",
    "realtime_session_seconds": "Realtime model connection seconds",
    "session_seconds": "Conversation seconds",
}

BILLABLE_METRIC_TYPES = frozenset({"llm_metrics", "realtime_model_metrics", "stt_metrics", "tts_metrics"})


class MetricError(ValueError):
    """A billable field is missing its number or holds something that is not a finite number ≥ 0."""

    def __init__(self, field_name: str, detail: str):
        super().__init__(detail)
        self.field = field_name
        self.detail = detail


@dataclass
class MappedUsage:
    """Meter quantities derived from one LiveKit object, plus any gap between totals and details."""

    usage: dict[str, Decimal]
    provider: str
    model: str
    flags: dict[str, str] = field(default_factory=dict)


def _number(obj: Mapping[str, Any] | None, key: str, path: str = "") -> Decimal:
    """A billable count from a LiveKit dump: absent or null means 0 (fields added in later releases)."""
    if obj is None:
        return Decimal(0)
    value = obj.get(key)
    if value is None:
        return Decimal(0)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise MetricError(path + key, "must be a number")
    quantity = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
    if not quantity.is_finite() or quantity < 0:
        raise MetricError(path + key, "must be a finite number ≥ 0")
    return quantity


def _sub_object(obj: Mapping[str, Any], key: str, path: str = "") -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MetricError(path + key, "must be an object or null")
    return value


def _token_split(
    total_in: Decimal,
    cached_total: Decimal,
    cache_write: Decimal,
    text: Decimal,
    audio: Decimal,
    image: Decimal,
    cached_text: Decimal,
    cached_audio: Decimal,
    cached_image: Decimal,
    total_out: Decimal,
    out_text: Decimal,
    out_audio: Decimal,
    out_image: Decimal,
) -> tuple[dict[str, Decimal], dict[str, str]]:
    """Split LLM token counts into the disjoint meters.

    Providers' modality details do not always add up to the totals (Gemini under-reports audio; pipeline
    LLMs report no modality at all). We keep the provider's figures, bill tokens the details leave
    unclassified as text, and record every gap in ``flags`` — never inventing tokens.
    """
    flags: dict[str, str] = {}
    usage = {
        "llm_input_cached_text_tokens": cached_text,
        "llm_input_audio_tokens": audio - cached_audio,
        "llm_input_cached_audio_tokens": cached_audio,
        "llm_input_image_tokens": image,
        "llm_input_text_tokens": text - cached_text,
        "llm_input_cache_write_tokens": cache_write,
        "llm_output_text_tokens": out_text,
        "llm_output_audio_tokens": out_audio,
    }
    if out_image:
        flags["unbilled_output_image_tokens"] = str(out_image)
    # Cached tokens whose modality is not reported are billed as cached text (the conservative reading).
    # They are part of the input total, so they come out of the unclassified input first, then out of
    # uncached text — otherwise they would be billed twice.
    unclassified_cached = max(cached_total - (cached_text + cached_audio + cached_image), Decimal(0))
    unclassified_in = total_in - cache_write - (text + audio + image)
    if unclassified_cached:
        usage["llm_input_cached_text_tokens"] += unclassified_cached
        from_unclassified = min(unclassified_cached, max(unclassified_in, Decimal(0)))
        unclassified_in -= from_unclassified
        usage["llm_input_text_tokens"] -= unclassified_cached - from_unclassified
        if text or audio or image:
            flags["unclassified_cached_tokens"] = str(unclassified_cached)
    if unclassified_in > 0:
        usage["llm_input_text_tokens"] += unclassified_in
        if text or audio or image:  # pipeline LLMs report no modality at all: that is not a gap
            flags["unclassified_input_tokens"] = str(unclassified_in)
    elif unclassified_in < 0:
        flags["input_details_exceed_total"] = str(-unclassified_in)
    for code in ("llm_input_audio_tokens", "llm_input_text_tokens"):
        if usage[code] < 0:  # cached figures larger than the modality total: keep the cached figure
            flags[f"negative_{code}"] = str(usage[code])
            usage[code] = Decimal(0)
    unclassified_out = total_out - (out_text + out_audio + out_image)
    if unclassified_out > 0:
        usage["llm_output_text_tokens"] += unclassified_out
        if out_text or out_audio or out_image:
            flags["unclassified_output_tokens"] = str(unclassified_out)
    elif unclassified_out < 0:
        flags["output_details_exceed_total"] = str(-unclassified_out)
    return usage, flags


def _provider_model(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return "", ""
    return _texts(metadata, ("model_provider", "model_name"), "metadata/", "must be a string or null")


def _texts(source: Mapping[str, Any], keys: tuple[str, str], pointer: str, detail: str) -> tuple[str, str]:
    """The two optional strings at ``keys`` ("" when missing or null); anything else is a MetricError."""
    first, second = (source.get(key) or "" for key in keys)
    for key, value in zip(keys, (first, second), strict=True):
        if not isinstance(value, str):
            raise MetricError(pointer + key, detail)
    return first, second


def map_livekit_metric(metric: Mapping[str, Any]) -> MappedUsage | None:
    """Meter quantities for one ``model_dump()`` of a LiveKit metrics object; None for non-billable types."""
    kind = metric.get("type")
    if kind not in BILLABLE_METRIC_TYPES:
        return None
    provider, model = _provider_model(metric)
    if kind == "llm_metrics":
        prompt = _number(metric, "prompt_tokens")
        cached = _number(metric, "prompt_cached_tokens")
        usage, flags = _token_split(
            prompt,
            cached,
            _number(metric, "cache_creation_tokens"),
            *([Decimal(0)] * 6),
            _number(metric, "completion_tokens"),
            *([Decimal(0)] * 3),
        )
    elif kind == "realtime_model_metrics":
        details = _sub_object(metric, "input_token_details")
        cached_details = (
            _sub_object(details, "cached_tokens_details", "input_token_details/") if details else None
        )
        out = _sub_object(metric, "output_token_details")
        d, c, o = (
            "input_token_details/",
            "input_token_details/cached_tokens_details/",
            "output_token_details/",
        )
        usage, flags = _token_split(
            _number(metric, "input_tokens"),
            _number(details, "cached_tokens", d),
            Decimal(0),
            _number(details, "text_tokens", d),
            _number(details, "audio_tokens", d),
            _number(details, "image_tokens", d),
            _number(cached_details, "text_tokens", c),
            _number(cached_details, "audio_tokens", c),
            _number(cached_details, "image_tokens", c),
            _number(metric, "output_tokens"),
            _number(out, "text_tokens", o),
            _number(out, "audio_tokens", o),
            _number(out, "image_tokens", o),
        )
        usage["realtime_session_seconds"] = _number(metric, "session_duration")
    elif kind == "stt_metrics":
        usage = {
            "stt_audio_seconds": _number(metric, "audio_duration"),
            "stt_input_tokens": _number(metric, "input_tokens"),
            "stt_output_tokens": _number(metric, "output_tokens"),
        }
        flags = {}
    else:  # tts_metrics
        usage = {
            "tts_characters": _number(metric, "characters_count"),
            "tts_audio_seconds": _number(metric, "audio_duration"),
            "tts_input_tokens": _number(metric, "input_tokens"),
            "tts_output_tokens": _number(metric, "output_tokens"),
        }
        flags = {}
    return MappedUsage({k: v for k, v in usage.items() if v}, provider, model, flags)


def map_livekit_model_usage(entry: Mapping[str, Any]) -> MappedUsage | None:
    """Meter quantities for one ``AgentSession.usage`` entry (``LLMModelUsage``, ``STTModelUsage``, …)."""
    kind = entry.get("type")
    provider, model = _texts(entry, ("provider", "model"), "", "must be a string")
    n = lambda key: _number(entry, key)  # noqa: E731
    if kind == "llm_usage":
        usage, flags = _token_split(
            n("input_tokens"),
            n("input_cached_tokens"),
            n("input_cache_creation_tokens"),
            n("input_text_tokens"),
            n("input_audio_tokens"),
            n("input_image_tokens"),
            n("input_cached_text_tokens"),
            n("input_cached_audio_tokens"),
            n("input_cached_image_tokens"),
            n("output_tokens"),
            n("output_text_tokens"),
            n("output_audio_tokens"),
            Decimal(0),
        )
        usage["realtime_session_seconds"] = n("session_duration")
    elif kind == "stt_usage":
        usage = {
            "stt_audio_seconds": n("audio_duration"),
            "stt_input_tokens": n("input_tokens"),
            "stt_output_tokens": n("output_tokens"),
        }
        flags = {}
    elif kind == "tts_usage":
        usage = {
            "tts_characters": n("characters_count"),
            "tts_audio_seconds": n("audio_duration"),
            "tts_input_tokens": n("input_tokens"),
            "tts_output_tokens": n("output_tokens"),
        }
        flags = {}
    else:  # interruption_usage, eot_usage, …: LiveKit-hosted models billed by LiveKit, not metered here
        return None
    return MappedUsage({k: v for k, v in usage.items() if v}, provider, model, flags)
