"""Test builders for billing: plans, subscriptions and usage stored at any date (bypassing only the API's
35-day window, by handing the ingest service a 'now' of the test's choosing)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from billing import invoicing
from billing.models import BillingProfile, PlanVersion, Price, PricePlan, PriceTier, Subscription
from billing.periods import next_month
from tests.factories import AgentFactory, TenantFactory
from usage import ingest, validation

M = Decimal(1_000_000)


def make_plan(
    slug="pro", base_fee="49.00", agent_fee="0", effective_from=date(2026, 1, 1), prices=None, currency="USD"
):
    plan = PricePlan.objects.create(name=slug.title(), slug=slug, currency=currency)
    version = PlanVersion.objects.create(
        plan=plan,
        version=1,
        effective_from=effective_from,
        base_fee=Decimal(base_fee),
        fee_per_active_agent=Decimal(agent_fee),
    )
    for spec in prices if prices is not None else default_prices():
        tiers = spec.pop("tiers", [])
        price = Price.objects.create(version=version, **spec)
        for up_to, unit_amount in tiers:
            PriceTier.objects.create(price=price, up_to=up_to, unit_amount=Decimal(unit_amount))
    return plan


def default_prices() -> list[dict]:
    return [
        {
            "meter_id": "llm_input_text_tokens",
            "model_pattern": "gpt-4o-mini*",
            "unit_amount": Decimal("0.30"),
            "unit_size": M,
        },
        {
            "meter_id": "llm_input_cached_text_tokens",
            "model_pattern": "gpt-4o-mini*",
            "unit_amount": Decimal("0.15"),
            "unit_size": M,
        },
        {
            "meter_id": "llm_output_text_tokens",
            "model_pattern": "gpt-4o-mini*",
            "unit_amount": Decimal("1.20"),
            "unit_size": M,
        },
        {
            "meter_id": "stt_audio_seconds",
            "provider": "Deepgram",
            "unit_amount": Decimal("0.012"),
            "unit_size": Decimal(60),
        },
        {
            "meter_id": "tts_characters",
            "price_model": "graduated",
            "unit_size": Decimal(1000),
            "free_allowance": Decimal(100),
            "tiers": [(Decimal(500), "0.10"), (None, "0.05")],
        },
        {"meter_id": "tts_audio_seconds", "unit_amount": Decimal(0), "unit_size": Decimal(60)},
    ]


def subscribe(tenant, plan, starts_on=date(2026, 1, 1), ends_on=None):
    return Subscription.objects.create(tenant=tenant, plan=plan, starts_on=starts_on, ends_on=ends_on)


def store(
    agent,
    when: datetime,
    usage: dict,
    event_id: str,
    model="gpt-4o-mini",
    provider="api.openai.com",
    session_id="call-1",
):
    """Store one event as the API would, at ``when`` (with the API's clock set to ``when``)."""
    payload = {
        "events": [
            {
                "id": event_id,
                "timestamp": when.astimezone(UTC).isoformat(),
                "session_id": session_id,
                "provider": provider,
                "model": model,
                "usage": usage,
            }
        ]
    }
    batch = validation.validate_event_batch(payload, validation.active_meter_codes(), now=when)
    return ingest.store_events(agent.tenant, agent, batch)


def store_calls(agent, when: datetime, seconds: dict[str, int]) -> None:
    """One batch of Deepgram nova-3 STT events at ``when``: one per session (session id → audio seconds)."""
    payload = {
        "events": [
            {
                "id": f"stt-{session_id}",
                "timestamp": when.astimezone(UTC).isoformat(),
                "session_id": session_id,
                "provider": "Deepgram",
                "model": "nova-3",
                "usage": {"stt_audio_seconds": quantity},
            }
            for session_id, quantity in seconds.items()
        ]
    }
    batch = validation.validate_event_batch(payload, validation.active_meter_codes(), now=when)
    ingest.store_events(agent.tenant, agent, batch)


def line_tuples(invoice) -> list[tuple]:
    return [
        (
            line.position,
            line.kind,
            line.adjusts_kind,
            line.description,
            line.meter,
            line.provider,
            line.model,
            line.segment_start,
            line.segment_end,
            line.quantity,
            line.allowance,
            line.billable_quantity,
            line.unit_price,
            line.amount,
            line.platform_cost,
        )
        for line in invoice.lines.order_by("position")
    ]


def store_tts(agent, when: datetime, characters, event_id: str) -> None:
    """A Cartesia sonic-3 TTS event."""
    store(agent, when, {"tts_characters": characters}, event_id, provider="Cartesia", model="sonic-3")


def store_stt(agent, when: datetime, seconds, event_id: str) -> None:
    """A Deepgram nova-3 STT event."""
    store(agent, when, {"stt_audio_seconds": seconds}, event_id, provider="Deepgram", model="nova-3")


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def billed(currency="USD", base_fee="49.00", usage=True, tax_country=None, **tenant_fields):
    """An agent of a tenant on a 49-a-month plan with usage in March 2026 (LLM input $2.10, STT $0.12) and, with
    ``tax_country``, a consumer's billing profile there: what the credit note tests credit."""
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC", currency=currency, **tenant_fields))
    subscribe(agent.tenant, make_plan(slug=f"p-{agent.tenant.pk}", base_fee=base_fee, currency=currency))
    if usage:
        store(agent, at(date(2026, 3, 5)), {"llm_input_text_tokens": 7_000_000}, "llm")
        store(
            agent,
            at(date(2026, 3, 6)),
            {"stt_audio_seconds": 600},
            "stt",
            provider="Deepgram",
            model="nova-3",
        )
    if tax_country:
        BillingProfile.objects.create(
            tenant=agent.tenant,
            legal_name="Buyer",
            address_line1="1 Main St",
            city="Town",
            country=tax_country,
            is_business=False,
        )
    return agent


def finalize(agent, period: date = date(2026, 3, 1)):
    """The period's invoice of the agent's tenant, finalized the day after the period."""
    draft = invoicing.generate_invoice(agent.tenant.pk, period)
    return invoicing.finalize_invoice(draft.pk, force=True, now=at(next_month(period)) + timedelta(days=1))
