"""`manage.py import_provider_rates`: provider rates from the pinned public price list (billing.catalogue).

Expected figures are read here from the JSON file the pinned package ships and converted in the test."""

import importlib.metadata
import json
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from billing import period_pricing, pricing
from billing.models import ProviderRate
from tests.billing.admin.pages import post_session

pytestmark = pytest.mark.django_db

MILLION = Decimal(1_000_000)


def price_list() -> dict:
    path = importlib.metadata.distribution("tokencost").locate_file("tokencost/model_prices.json")
    return json.loads(Path(str(path)).read_text())


def per(entry: dict, field: str, unit_size: Decimal) -> Decimal:
    return Decimal(str(entry[field])) * unit_size


def run(*args: str) -> str:
    out = StringIO()
    call_command("import_provider_rates", *args, stdout=out)
    return out.getvalue()


def stored(provider: str, model: str, meter: str) -> list[ProviderRate]:
    return list(
        ProviderRate.objects.filter(provider=provider, model_pattern=model, meter_id=meter).order_by(
            "effective_from"
        )
    )


def cost_on(provider: str, model: str, meter: str, on: date) -> Decimal | None:
    rates = period_pricing.provider_rates("USD")
    rate = pricing.match_rate(rates, pricing.UsageKey(meter, provider, model), on=on, currency="USD")
    return None if rate is None else rate.cost_per_unit / rate.unit_size


def test_import_loads_the_lists_figures_for_livekits_provider_names():
    listed = price_list()
    run("--effective-from", "2026-01-01")

    mini = listed["gpt-4o-mini"]
    expected = {
        ("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens"): per(
            mini, "input_cost_per_token", MILLION
        ),
        ("api.openai.com", "gpt-4o-mini", "llm_input_cached_text_tokens"): per(
            mini, "cache_read_input_token_cost", MILLION
        ),
        ("api.openai.com", "gpt-4o-mini", "llm_output_text_tokens"): per(
            mini, "output_cost_per_token", MILLION
        ),
        ("api.anthropic.com", "claude-3-5-sonnet-20241022", "llm_input_cache_write_tokens"): per(
            listed["claude-3-5-sonnet-20241022"], "cache_creation_input_token_cost", MILLION
        ),
        ("Gemini", "gemini-2.0-flash", "llm_input_audio_tokens"): per(
            listed["gemini/gemini-2.0-flash"], "input_cost_per_audio_token", MILLION
        ),
        # Deepgram bills seconds of audio: per minute here
        ("Deepgram", "nova-3", "stt_audio_seconds"): per(
            listed["deepgram/nova-3"], "input_cost_per_second", 60
        ),
        # token-billed transcription: the input is audio, so the audio-token figure
        ("api.openai.com", "gpt-4o-transcribe", "stt_input_tokens"): per(
            listed["gpt-4o-transcribe"], "input_cost_per_audio_token", MILLION
        ),
        ("api.openai.com", "tts-1", "tts_characters"): per(
            listed["tts-1"], "input_cost_per_character", MILLION
        ),
    }
    for (provider, model, meter), cost in expected.items():
        rows = stored(provider, model, meter)
        assert len(rows) == 1, (provider, model, meter)
        assert rows[0].cost_per_unit == cost, (provider, model, meter)
        assert rows[0].origin == ProviderRate.Origin.CATALOGUE
        assert rows[0].effective_from == date(2026, 1, 1)
        assert "tokencost 0.1.26" in rows[0].source
        # and the pricing engine finds it for that usage
        assert cost_on(provider, model, meter, date(2026, 2, 1)) == cost / rows[0].unit_size

    # a model billed per token for transcription gets no per-second rate (that would count the audio twice)
    assert not stored("api.openai.com", "gpt-4o-transcribe", "stt_audio_seconds")
    # exact figures: no float noise from the JSON numbers
    assert stored("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens")[0].cost_per_unit == Decimal(
        "0.15"
    )


def test_dry_run_changes_nothing_and_a_second_import_is_idempotent():
    out = run("--dry-run")
    assert "Dry run: nothing changed." in out
    assert ProviderRate.objects.count() == 0
    new = int(out.split("new: ")[1].split()[0])
    assert new > 100

    run()
    assert ProviderRate.objects.count() == new
    before = list(ProviderRate.objects.values_list("pk", "cost_per_unit", "effective_from").order_by("pk"))
    again = run("--effective-from", "2027-01-01")
    assert "new: 0" in again and "changed: 0" in again and f"unchanged: {new}" in again
    assert (
        list(ProviderRate.objects.values_list("pk", "cost_per_unit", "effective_from").order_by("pk"))
        == before
    )


def test_manual_rates_are_never_overwritten_or_shadowed():
    manual = ProviderRate.objects.create(
        provider="api.openai.com",
        model_pattern="gpt-4o-mini*",
        meter_id="llm_input_text_tokens",
        cost_per_unit=Decimal("0.99"),
        unit_size=MILLION,
        effective_from=date(2025, 1, 1),
        source="our contract",
    )
    out = run("--effective-from", "2026-01-01")
    assert "= api.openai.com gpt-4o-mini llm_input_text_tokens" in out
    manual.refresh_from_db()
    assert manual.cost_per_unit == Decimal("0.99") and manual.origin == ProviderRate.Origin.MANUAL
    # no catalogue row for what the manual pattern covers, not even the more specific exact name...
    assert not stored("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens")
    assert not stored("api.openai.com", "gpt-4o-mini-2024-07-18", "llm_input_text_tokens")
    assert (
        cost_on("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens", date(2026, 6, 1))
        == Decimal("0.99") / MILLION
    )
    # ...but the model's other meters come from the list
    assert stored("api.openai.com", "gpt-4o-mini", "llm_output_text_tokens")


def test_a_changed_list_adds_a_dated_rate_and_keeps_the_history(tmp_path):
    run("--effective-from", "2026-01-01")
    listed = price_list()
    listed["gpt-4o-mini"]["input_cost_per_token"] = 2e-07
    newer = tmp_path / "model_prices_and_context_window.json"
    newer.write_text(json.dumps(listed))

    out = run("--source", str(newer), "--effective-from", "2026-06-01", "--dry-run")
    assert "changed: 1" in out and "~ api.openai.com gpt-4o-mini llm_input_text_tokens" in out
    assert len(stored("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens")) == 1

    run("--source", str(newer), "--effective-from", "2026-06-01")
    rows = stored("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens")
    assert [(r.effective_from, r.cost_per_unit) for r in rows] == [
        (date(2026, 1, 1), Decimal("0.15")),
        (date(2026, 6, 1), Decimal("0.2")),
    ]
    assert "model_prices_and_context_window.json" in rows[1].source
    per_token = lambda d: cost_on("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens", d)  # noqa: E731
    assert per_token(date(2026, 3, 1)) == Decimal("0.15") / MILLION
    assert per_token(date(2026, 7, 1)) == Decimal("0.2") / MILLION
    # the unchanged meters got no new row
    assert len(stored("api.openai.com", "gpt-4o-mini", "llm_output_text_tokens")) == 1


def test_models_in_use_that_the_list_lacks_are_reported(agent_client):
    post_session(agent_client)  # Deepgram nova-3, gpt-4o-mini, Cartesia sonic-3 (the list has no Cartesia)
    out = run()
    missing = out.split("in use without any provider rate:")[1]
    assert "? Cartesia sonic-3 tts_characters" in missing
    assert "nova-3" not in missing and "gpt-4o-mini" not in missing


@pytest.mark.parametrize(
    "content", ["not json", "[1, 2]", '{"gpt-4o-mini": {"mode": "chat", "input_cost_per_token": "NaN"}}']
)
def test_a_bad_source_is_refused_or_yields_nothing(tmp_path, content):
    source = tmp_path / "prices.json"
    source.write_text(content)
    try:
        out = run("--source", str(source))
    except CommandError as error:
        assert "cannot read the price list" in str(error)
    else:
        assert "new: 0" in out
    assert ProviderRate.objects.count() == 0


def test_a_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="cannot read the price list"):
        run("--source", str(tmp_path / "absent.json"))
