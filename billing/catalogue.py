"""Provider rates from a maintained public price list (issue 17, docs/decisions/015-provider-rate-catalogue.md).

The list is LiteLLM's MIT-licensed ``model_prices_and_context_window.json``, in the copy that the ``tokencost``
package ships (pinned in pyproject, so every install reads the same snapshot; ``--source FILE`` reads a newer
copy of the same file). Its figures are USD per single token, character or second as JSON floats; each becomes
a ``Decimal`` through its shortest representation (``repr``), so 1.5e-07 is exactly 0.00000015, then is scaled
to a readable unit size (per 1M tokens or characters, per minute of audio).

``plan_import`` compares the list with the stored rates and returns a plan (nothing written); ``apply`` writes
it. Rates an operator typed in (``origin=manual``) are never overwritten or shadowed: a catalogue rate is not
imported where a manual rate already covers that (provider, model, meter). A changed figure becomes a new
dated row, so invoices and margins of earlier periods keep the rate that was in force.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import transaction

from billing import pricing
from billing.models import ProviderRate
from usage.models import AgentRollup

PACKAGE = "tokencost"
PACKAGE_FILE = "tokencost/model_prices.json"
CURRENCY = "USD"
PER_MILLION = Decimal(1_000_000)
PER_MINUTE = Decimal(60)

# LiveKit's ``model_provider`` strings (the plugin's ``provider``: the base URL's host for OpenAI-compatible
# clients, a vendor name otherwise; /work/shared/notes/livekit-metrics.md §5) → how the list names that vendor's
# models: a key prefix, or bare keys of the given ``litellm_provider``. ``livekit`` (LiveKit Inference, billed by
# LiveKit) and vendors the list lacks (Cartesia) are not mapped; their models are reported as missing.
PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "api.openai.com": ("", ("openai",)),
    "api.anthropic.com": ("", ("anthropic",)),
    "Gemini": ("gemini/", ()),
    "Vertex AI": ("", ("vertex_ai-language-models",)),
    "Deepgram": ("deepgram/", ()),
    "AssemblyAI": ("assemblyai/", ()),
    "ElevenLabs": ("elevenlabs/", ()),
    "api.groq.com": ("groq/", ()),
    "api.mistral.ai": ("mistral/", ()),
    "api.deepseek.com": ("deepseek/", ()),
    "api.x.ai": ("xai/", ()),
    "api.cerebras.ai": ("cerebras/", ()),
}

# The list's fields → Meterline's meters, per kind of model (the list's ``mode``). A model gets a rate only for
# the way its vendor bills it, so pricing every meter and adding never counts the same work twice: speech-to-text
# billed per token gets token rates and no per-second rate; text-to-speech billed per character gets no token or
# per-second rate.
_LLM_FIELDS = [
    ("input_cost_per_token", "llm_input_text_tokens"),
    ("cache_read_input_token_cost", "llm_input_cached_text_tokens"),
    ("cache_creation_input_token_cost", "llm_input_cache_write_tokens"),
    ("input_cost_per_audio_token", "llm_input_audio_tokens"),
    ("cache_read_input_audio_token_cost", "llm_input_cached_audio_tokens"),
    ("output_cost_per_token", "llm_output_text_tokens"),
    ("output_cost_per_audio_token", "llm_output_audio_tokens"),
]
LLM_MODES = frozenset({"chat", "responses", "completion"})
UNIT_SIZES = {"token": PER_MILLION, "character": PER_MILLION, "second": PER_MINUTE}


@dataclass(frozen=True)
class CatalogueRate:
    provider: str  # LiveKit's provider string
    model: str  # LiveKit's model name (the list's key without its prefix)
    meter: str
    cost_per_unit: Decimal  # per unit_size
    unit_size: Decimal
    key: str  # the list's key, for the source note


@dataclass
class Snapshot:
    name: str  # e.g. "tokencost 0.1.26"
    sha256: str
    entries: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name} sha256:{self.sha256[:12]}"


@dataclass
class ImportPlan:
    new: list[CatalogueRate] = field(default_factory=list)
    changed: list[tuple[ProviderRate, CatalogueRate]] = field(default_factory=list)
    unchanged: int = 0
    manual: list[CatalogueRate] = field(default_factory=list)  # skipped: a manual rate covers it
    missing: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # (provider, model, meter) in use, no rate


def load_snapshot(source: Path | None = None) -> Snapshot:
    """The pinned list (the installed ``tokencost``'s copy), or a copy of the same JSON at ``source``."""
    if source is None:
        distribution = importlib.metadata.distribution(PACKAGE)
        path = Path(str(distribution.locate_file(PACKAGE_FILE)))
        name = f"LiteLLM price list via {PACKAGE} {distribution.version}"
    else:
        path = Path(source)
        name = f"LiteLLM price list from {path.name}"
    raw = path.read_bytes()
    entries = json.loads(raw)
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by model name")
    return Snapshot(name=name, sha256=hashlib.sha256(raw).hexdigest(), entries=entries)


def exact_decimal(value: Any) -> Decimal | None:
    """A list figure as the decimal it was written as (JSON float → shortest repr), or None if it is not a
    finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return number if number.is_finite() and number >= 0 else None


def _meter_fields(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(list field, meter, unit) pairs for one entry, by its mode."""
    mode = entry.get("mode")
    has = lambda name: exact_decimal(entry.get(name)) is not None  # noqa: E731
    if mode in LLM_MODES:
        return [(name, meter, "token") for name, meter in _LLM_FIELDS if has(name)]
    if mode == "audio_transcription":
        if has("input_cost_per_audio_token") or has("input_cost_per_token"):
            source = (
                "input_cost_per_audio_token" if has("input_cost_per_audio_token") else "input_cost_per_token"
            )
            pairs = [(source, "stt_input_tokens", "token")]
            if has("output_cost_per_token"):
                pairs.append(("output_cost_per_token", "stt_output_tokens", "token"))
            return pairs
        return (
            [("input_cost_per_second", "stt_audio_seconds", "second")] if has("input_cost_per_second") else []
        )
    if mode == "audio_speech":
        if has("input_cost_per_character"):
            return [("input_cost_per_character", "tts_characters", "character")]
        if has("input_cost_per_token") or has("output_cost_per_audio_token") or has("output_cost_per_token"):
            pairs = (
                [("input_cost_per_token", "tts_input_tokens", "token")] if has("input_cost_per_token") else []
            )
            output = (
                "output_cost_per_audio_token"
                if has("output_cost_per_audio_token")
                else "output_cost_per_token"
            )
            if has(output):
                pairs.append((output, "tts_output_tokens", "token"))
            return pairs
        return (
            [("output_cost_per_second", "tts_audio_seconds", "second")]
            if has("output_cost_per_second")
            else []
        )
    return []


def _model_for(provider: str, key: str, entry: dict[str, Any]) -> str | None:
    prefix, vendors = PROVIDERS[provider]
    if prefix:
        return key[len(prefix) :] if key.startswith(prefix) else None
    if "/" in key or entry.get("litellm_provider") not in vendors:
        return None
    return key


def catalogue_rates(snapshot: Snapshot) -> Iterator[CatalogueRate]:
    """Every rate the list gives for a mapped provider's model, at Meterline's unit sizes."""
    for key, entry in sorted(snapshot.entries.items()):
        if not isinstance(entry, dict) or any(char in key for char in "*?["):
            continue  # not a model (e.g. "sample_spec"), or a name that fnmatch would read as a pattern
        for provider in PROVIDERS:
            model = _model_for(provider, key, entry)
            if not model:
                continue
            for name, meter, unit in _meter_fields(entry):
                figure = exact_decimal(entry[name])
                assert figure is not None  # _meter_fields only returns fields that hold one
                unit_size = UNIT_SIZES[unit]
                yield CatalogueRate(provider, model, meter, (figure * unit_size).normalize(), unit_size, key)


def _same(row: ProviderRate, rate: CatalogueRate) -> bool:
    return row.cost_per_unit == rate.cost_per_unit and row.unit_size == rate.unit_size


def _pricing_rate(row: ProviderRate) -> pricing.ProviderRate:
    return pricing.ProviderRate(
        provider=row.provider,
        model_pattern=row.model_pattern,
        meter=row.meter_id,
        cost_per_unit=row.cost_per_unit,
        unit_size=row.unit_size,
        effective_from=row.effective_from,
        currency=row.currency,
    )


def plan_import(snapshot: Snapshot, effective_from: date) -> ImportPlan:
    """What importing ``snapshot`` on ``effective_from`` would change; writes nothing."""
    rows = list(ProviderRate.objects.filter(currency=CURRENCY))
    manual = [_pricing_rate(r) for r in rows if r.origin == ProviderRate.Origin.MANUAL]
    latest: dict[tuple[str, str, str], ProviderRate] = {}
    for row in rows:
        if row.origin == ProviderRate.Origin.CATALOGUE:
            key = (row.provider.casefold(), row.model_pattern, row.meter_id)
            if key not in latest or row.effective_from > latest[key].effective_from:
                latest[key] = row
    plan = ImportPlan()
    far_future = date.max
    for rate in catalogue_rates(snapshot):
        usage_key = pricing.UsageKey(rate.meter, rate.provider, rate.model)
        if pricing.match_rate(manual, usage_key, on=far_future, currency=CURRENCY) is not None:
            plan.manual.append(rate)
            continue
        stored = latest.get((rate.provider.casefold(), rate.model, rate.meter))
        if stored is None:
            plan.new.append(rate)
        elif _same(stored, rate):
            plan.unchanged += 1
        else:
            plan.changed.append((stored, rate))
    plan.missing = models_without_rates(rows, [*plan.new, *(rate for _, rate in plan.changed)])
    return plan


def models_without_rates(
    rows: Iterable[ProviderRate], incoming: Iterable[CatalogueRate]
) -> list[tuple[str, str, str]]:
    """(provider, model, meter) groups of stored usage that no stored or incoming rate covers."""
    rates = [_pricing_rate(r) for r in rows]
    rates += [
        pricing.ProviderRate(
            provider=r.provider,
            model_pattern=r.model,
            meter=r.meter,
            cost_per_unit=r.cost_per_unit,
            unit_size=r.unit_size,
            effective_from=date.min,
            currency=CURRENCY,
        )
        for r in incoming
    ]
    in_use = AgentRollup.objects.values_list("provider", "model", "meter").distinct().order_by()
    missing = {
        (provider, model, meter)
        for provider, model, meter in in_use
        if pricing.match_rate(rates, pricing.UsageKey(meter, provider, model), on=date.max, currency=CURRENCY)
        is None
    }
    return sorted(missing)


def _source(snapshot: Snapshot, rate: CatalogueRate) -> str:
    return f"{snapshot.label}: {rate.key}"[:300]


@transaction.atomic
def apply(plan: ImportPlan, snapshot: Snapshot, effective_from: date) -> None:
    """Write ``plan``: new rows for new and changed rates, dated ``effective_from`` (a changed rate whose
    latest row already has that date is corrected in place: one list, one figure per day)."""
    for rate in plan.new:
        ProviderRate.objects.create(
            provider=rate.provider,
            model_pattern=rate.model,
            meter_id=rate.meter,
            currency=CURRENCY,
            cost_per_unit=rate.cost_per_unit,
            unit_size=rate.unit_size,
            effective_from=effective_from,
            origin=ProviderRate.Origin.CATALOGUE,
            source=_source(snapshot, rate),
        )
    for stored, rate in plan.changed:
        ProviderRate.objects.update_or_create(
            provider=stored.provider,
            model_pattern=stored.model_pattern,
            meter_id=stored.meter_id,
            currency=CURRENCY,
            effective_from=max(effective_from, stored.effective_from),
            defaults={
                "cost_per_unit": rate.cost_per_unit,
                "unit_size": rate.unit_size,
                "origin": ProviderRate.Origin.CATALOGUE,
                "source": _source(snapshot, rate),
            },
        )
