"""What billing makes of corrections (decision 021): a finalized period is never changed, its correction is an
adjustment on the next invoice; per-call costs take out what the retracted event was charged; a rebuild replays
only the events that count.

Amounts are computed here, with this file's own prices and tier arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.utils import timezone

from billing import call_costs, invoicing, periods
from billing.models import CallCost, Invoice, TieredCharge, TierPosition
from tests.billing.builders import line_tuples, make_plan, subscribe
from tests.conftest import AgentClient
from tests.usage.builders import iso
from usage import corrections

pytestmark = pytest.mark.django_db

CHAR = Decimal("0.01")  # per TTS character


def linear() -> list[dict]:
    return [{"meter_id": "tts_characters", "unit_amount": CHAR, "unit_size": Decimal(1)}]


# graduated per character: the first 500 at 2 cents, the rest at 1 cent
TIERS = [(Decimal(500), Decimal("0.02")), (None, Decimal("0.01"))]


def graduated() -> list[dict]:
    """A new list each time: make_plan takes the tiers out of the dicts it is given."""
    return [
        {"meter_id": "tts_characters", "price_model": "graduated", "unit_size": Decimal(1), "tiers": TIERS}
    ]


def slices(low: Decimal, high: Decimal) -> Decimal:
    """Graduated: each character between ``low`` and ``high`` at the price of the tier it falls in."""
    total, lower = Decimal(0), Decimal(0)
    for up_to, price in TIERS:
        upper = high if up_to is None else min(high, up_to)
        if upper > max(low, lower):
            total += (upper - max(low, lower)) * price
        lower = up_to or lower
    return total


def tts(event_id: str, chars: int, at: datetime, session: str = "call-1", **extra) -> dict:
    return {
        "id": event_id,
        "timestamp": iso(at),
        "session_id": session,
        "provider": "Cartesia",
        "model": "sonic-3",
        "usage": {"tts_characters": chars},
        **extra,
    }


def send(api: AgentClient, *events: dict) -> dict:
    response = api.post("/api/v1/events", {"events": list(events)})
    assert response.status_code == 200, response.content
    return response.json()


def session_cost(api: AgentClient, session: str) -> Decimal:
    response = api.get(f"/api/v1/sessions/{session}")
    assert response.status_code == 200, response.content
    return Decimal(response.json()["cost_precise"])


def test_a_correction_to_a_finalized_period_is_an_adjustment_on_the_next_invoice(agent_client, tenant):
    subscribe(tenant, make_plan(base_fee="10.00", prices=linear()))
    this_period, _ = invoicing.current_period(tenant)
    previous = periods.previous_month(this_period)
    last_month = datetime.combine(this_period, datetime.min.time(), UTC) - timedelta(hours=1)
    now = timezone.now() - timedelta(minutes=1)
    sent = [tts("old-1", 1000, last_month), tts("old-2", 300, last_month - timedelta(minutes=1))]
    send(agent_client, *sent, tts("new-1", 50, now))
    finalized = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, previous).pk, force=True)
    assert finalized.total == Decimal("10.00") + 1300 * CHAR
    before = (line_tuples(finalized), finalized.total, finalized.number)

    assert agent_client.post("/api/v1/events/old-2/retract", {"reason": "test call"}).status_code == 200
    draft = invoicing.generate_invoice(tenant.pk, this_period)
    (adjustment,) = draft.lines.filter(kind="adjustment")
    assert (adjustment.quantity, adjustment.amount, adjustment.adjusted_period_start) == (
        Decimal(-300),
        -300 * CHAR,
        previous,
    )
    assert adjustment.description.startswith(f"Usage corrected for {previous:%B %Y}")
    assert draft.total == Decimal("10.00") + 50 * CHAR - 300 * CHAR
    balance = agent_client.get("/api/v1/balance").json()
    assert Decimal(balance["unbilled_usage"]) == draft.total  # the balance counts the credit at once

    # replaced by more than it was: the net change of the period, +200 characters (+1000 −300 +500 … −1000)
    fix = tts("old-1b", 1500, last_month, replaces="old-1")
    send(agent_client, fix)
    draft = invoicing.generate_invoice(tenant.pk, this_period)
    (adjustment,) = draft.lines.filter(kind="adjustment")
    assert (adjustment.quantity, adjustment.amount) == (Decimal(200), 200 * CHAR)
    assert adjustment.description.startswith(f"Late usage for {previous:%B %Y}")
    assert Decimal(agent_client.get("/api/v1/balance").json()["unbilled_usage"]) == draft.total

    finalized = Invoice.objects.get(pk=finalized.pk)
    assert (line_tuples(finalized), finalized.total, finalized.number) == before  # never changed

    # once the adjustment is billed, it is not billed again
    invoicing.finalize_invoice(draft.pk, force=True)
    following = invoicing.generate_invoice(tenant.pk, periods.next_month(this_period))
    assert not following.lines.filter(kind="adjustment").exists()


def test_a_call_loses_what_its_retracted_usage_was_charged_and_positions_are_not_rewound(
    agent_client, tenant
):
    subscribe(tenant, make_plan(base_fee="0", prices=graduated()))
    now = timezone.now() - timedelta(minutes=10)
    # one batch each, in this order: positions 0 → 400 → 700 → 900
    for event in (tts("a", 400, now, "s1"), tts("b", 300, now, "s2"), tts("c", 200, now, "s1")):
        send(agent_client, event)
    charged = {"a": slices(0, 400), "b": slices(400, 700), "c": slices(700, 900)}
    assert session_cost(agent_client, "s1") == charged["a"] + charged["c"]
    assert session_cost(agent_client, "s2") == charged["b"]

    assert agent_client.post("/api/v1/events/b/retract", {}).status_code == 200
    assert (
        session_cost(agent_client, "s2") == 0
        and session_cost(agent_client, "s1") == charged["a"] + charged["c"]
    )
    assert not CallCost.objects.filter(tenant=tenant, session_id="s2").exists()

    send(agent_client, tts("d", 100, now, "s2"))  # the position stays at 900: not rewound by the retraction
    charged["d"] = slices(900, 1000)
    send(agent_client, tts("a2", 350, now, "s1", replaces="a"))  # a leaves at its own 400 × 2 c
    charged["a2"] = slices(1000, 1350)
    assert session_cost(agent_client, "s1") == charged["c"] + charged["a2"]
    assert session_cost(agent_client, "s2") == charged["d"]
    start, _ = invoicing.current_period(tenant)
    assert TierPosition.objects.get(tenant=tenant, period_start=start).quantity == 1350

    # the invoice prices what counts (650 characters); the period's reconciliation shows the tier effect
    draft = invoicing.generate_invoice(tenant.pk, start)
    assert draft.total == slices(0, 650)
    assert call_costs.period_calls(tenant, start) == charged["c"] + charged["a2"] + charged["d"]

    # a rebuild replays only what counts, in the order it was stored: c, d, a2
    call_costs.rebuild(tenant)
    assert session_cost(agent_client, "s1") == slices(0, 200) + slices(300, 650)
    assert session_cost(agent_client, "s2") == slices(200, 300)
    assert set(TieredCharge.objects.filter(tenant=tenant).values_list("event_id", flat=True)) == {
        "a2",
        "c",
        "d",
    }


def test_a_tiered_charge_forgotten_is_reversed_at_the_calls_average_and_old_charges_are_pruned(
    agent_client, tenant, agent
):
    subscribe(tenant, make_plan(base_fee="0", prices=graduated()))
    now = timezone.now() - timedelta(minutes=10)
    send(agent_client, tts("a", 400, now, "s1"), tts("b", 200, now, "s1"))  # one batch: 8.00 + 2.00 + 1.00
    assert session_cost(agent_client, "s1") == Decimal("11.00")
    TieredCharge.objects.filter(event_id="b").delete()  # as for usage stored before charges were kept
    corrections.retract(tenant, "b", agent=agent)
    average = (200 * Decimal("11.00") / 600).quantize(Decimal("1e-20"), rounding=ROUND_HALF_UP)
    assert session_cost(agent_client, "s1") == Decimal("11.00") - average

    assert call_costs.prune_charges(timezone.now()) == 0
    assert call_costs.prune_charges(timezone.now() + timedelta(days=37)) == 1
    assert not TieredCharge.objects.exists()


def test_linear_prices_reverse_exactly_across_periods_and_models(agent_client, tenant):
    subscribe(tenant, make_plan(base_fee="0", prices=linear()), starts_on=date(2026, 1, 1))
    now = timezone.now() - timedelta(minutes=10)
    send(agent_client, tts("a", 333, now), tts("b", 7, now))
    send(agent_client, {**tts("a2", 123, now, replaces="a"), "model": "sonic-2"})
    assert session_cost(agent_client, "call-1") == (123 + 7) * CHAR
    rows = {row.model: row.quantity for row in CallCost.objects.filter(tenant=tenant)}
    assert rows == {"sonic-3": 7, "sonic-2": 123}
