"""Demo billing: a realistic plan for the demo tenant, provider rates for the captured models, and the
past month invoiced. Prices are list prices from the LiveKit research notes (USD, November 2026)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing import call_costs, catalogue, invoicing, periods
from billing.models import Invoice, PlanVersion, Price, PricePlan, PriceTier, ProviderRate, Subscription
from tenants.models import Tenant

M = Decimal(1_000_000)
RATES_SOURCE = "list prices from docs/livekit-metrics research (LiteLLM 1.109.1, vendor pages), 2026-11-22"
RATES_FROM = date(2026, 1, 1)
# Typed in by hand (provider, model pattern, meter, cost per unit_size, unit_size) only for the captured models
# the pinned public price list lacks (newer than its snapshot, or a vendor it does not list); the rest come from
# it through billing.catalogue, as `manage.py import_provider_rates` loads them.
PROVIDER_RATES = [
    ("api.openai.com", "gpt-realtime*", "llm_input_text_tokens", "4.00", M),
    ("api.openai.com", "gpt-realtime*", "llm_input_cached_text_tokens", "0.40", M),
    ("api.openai.com", "gpt-realtime*", "llm_input_audio_tokens", "32.00", M),
    ("api.openai.com", "gpt-realtime*", "llm_input_cached_audio_tokens", "0.40", M),
    ("api.openai.com", "gpt-realtime*", "llm_output_text_tokens", "16.00", M),
    ("api.openai.com", "gpt-realtime*", "llm_output_audio_tokens", "64.00", M),
    ("Gemini", "gemini-2.5-flash-native-audio*", "llm_input_text_tokens", "0.50", M),
    ("Gemini", "gemini-2.5-flash-native-audio*", "llm_input_audio_tokens", "3.00", M),
    ("Gemini", "gemini-2.5-flash-native-audio*", "llm_output_text_tokens", "2.00", M),
    ("Gemini", "gemini-2.5-flash-native-audio*", "llm_output_audio_tokens", "12.00", M),
    ("Cartesia", "sonic-3*", "tts_characters", "50.00", M),
]
# Per-model resale prices, per unit_size (per_unit), plus cost_plus where the platform passes cost through.
PLAN_PRICES = [
    ("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini*", "0.30", M),
    ("llm_input_cached_text_tokens", "api.openai.com", "gpt-4o-mini*", "0.15", M),
    ("llm_output_text_tokens", "api.openai.com", "gpt-4o-mini*", "1.20", M),
    ("llm_input_text_tokens", "api.openai.com", "gpt-realtime*", "6.00", M),
    ("llm_input_cached_text_tokens", "api.openai.com", "gpt-realtime*", "0.60", M),
    ("llm_input_audio_tokens", "api.openai.com", "gpt-realtime*", "48.00", M),
    ("llm_input_cached_audio_tokens", "api.openai.com", "gpt-realtime*", "0.60", M),
    ("llm_output_text_tokens", "api.openai.com", "gpt-realtime*", "24.00", M),
    ("llm_output_audio_tokens", "api.openai.com", "gpt-realtime*", "96.00", M),
    ("stt_audio_seconds", "Deepgram", "", "0.012", Decimal(60)),  # $0.012 per minute of audio
    ("tts_audio_seconds", "Cartesia", "", "0", Decimal(60)),  # included: Cartesia is billed per character
]


def create_demo_rates() -> None:
    """The provider rates of the public price list, and PROVIDER_RATES by hand for what it lacks (once)."""
    snapshot = catalogue.load_snapshot()
    catalogue.apply(catalogue.plan_import(snapshot, RATES_FROM), snapshot, RATES_FROM)
    for provider, pattern, meter, cost, unit in PROVIDER_RATES:
        ProviderRate.objects.get_or_create(
            provider=provider,
            model_pattern=pattern,
            meter_id=meter,
            currency="USD",
            effective_from=RATES_FROM,
            defaults={"cost_per_unit": Decimal(cost), "unit_size": unit, "source": RATES_SOURCE},
        )


def create_demo_plan() -> PricePlan:
    """The "Voice Pro" plan (once): per-model prices, graduated Cartesia characters with an allowance, and
    cost-plus for Gemini and gpt-4o-transcribe tokens. The benchmarks bill with it too."""
    plan, created = PricePlan.objects.get_or_create(
        slug="voice-pro",
        defaults={
            "name": "Voice Pro",
            "currency": "USD",
            "description": "Per-model token prices, per-minute STT, per-character TTS.",
        },
    )
    if not created:
        return plan
    version = PlanVersion.objects.create(
        plan=plan,
        version=1,
        effective_from=date(2026, 1, 1),
        base_fee=Decimal("49.00"),
        fee_per_active_agent=Decimal("10.00"),
    )
    Price.objects.bulk_create(
        Price(
            version=version,
            meter_id=meter,
            provider=provider,
            model_pattern=pattern,
            price_model="per_unit",
            unit_amount=Decimal(amount),
            unit_size=unit,
        )
        for meter, provider, pattern, amount, unit in PLAN_PRICES
    )
    tts = Price.objects.create(
        version=version,
        meter_id="tts_characters",
        provider="Cartesia",
        price_model="graduated",
        unit_size=Decimal(1000),
        free_allowance=Decimal(10_000),
    )
    PriceTier.objects.create(price=tts, up_to=Decimal(500_000), unit_amount=Decimal("0.08"))
    PriceTier.objects.create(price=tts, up_to=None, unit_amount=Decimal("0.065"))
    cost_plus = [
        ("Gemini", "", meter)
        for meter in (
            "llm_input_text_tokens",
            "llm_input_audio_tokens",
            "llm_output_text_tokens",
            "llm_output_audio_tokens",
        )
    ]
    cost_plus += [
        ("api.openai.com", "gpt-4o-transcribe", meter) for meter in ("stt_input_tokens", "stt_output_tokens")
    ]
    Price.objects.bulk_create(
        Price(
            version=version,
            meter_id=meter,
            provider=provider,
            model_pattern=pattern,
            price_model="cost_plus",
            markup=Decimal("0.5"),
        )
        for provider, pattern, meter in cost_plus
    )
    return plan


@transaction.atomic
def load_demo_billing(tenant: Tenant, now=None) -> Invoice | None:
    """Give the demo tenant its plan and invoice its past month (once)."""
    now = now or timezone.now()
    create_demo_rates()
    plan = create_demo_plan()
    this_period, _ = periods.period_containing(now, tenant.timezone)
    last_period = periods.previous_month(this_period)
    Subscription.objects.get_or_create(tenant=tenant, starts_on=last_period, defaults={"plan": plan})
    call_costs.rebuild(tenant)  # the demo's usage was stored before its plan existed: price its calls now
    if Invoice.objects.for_tenant(tenant).filter(period_start=last_period).exclude(status="draft").exists():
        return None
    invoice = invoicing.generate_invoice(tenant.pk, last_period)
    invoicing.generate_invoice(tenant.pk, this_period)
    return invoicing.finalize_invoice(invoice.pk, now=now, force=True)
