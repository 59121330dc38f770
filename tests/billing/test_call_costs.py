"""Per-call costs (issue 17 part 1, decision 017): a session's cost is its usage priced when it arrived, at the
marginal rate then in force, at full precision, and it does not move when other usage arrives.

Every expected amount is computed here from the stored events and this file's own price table, in receipt
order, with its own tier arithmetic (not billing.pricing)."""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, localcontext
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import call_costs, period_pricing, periods, pricing
from billing.models import CallCost, PlanVersion, Price, PriceTier, TierPosition
from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.livekit_samples import LEGACY_SESSIONS, SESSIONS, load, shifted_metrics
from tests.usage.builders import event
from usage.models import Meter, UsageEvent

M = Decimal(1_000_000)
# The test's own price table: every meter has a catch-all price (any provider, any model); text input is
# graduated and text output volume-tiered, with bounds the captured sessions cross.
GRADUATED = [(Decimal(2_000), Decimal("2.50")), (Decimal(10_000), Decimal("1.25")), (None, Decimal("0.60"))]
VOLUME = [(Decimal(500), Decimal("10.00")), (None, Decimal("8.00"))]


def unit_price(meter: str) -> Decimal:
    """A distinct per-million price for every other meter (cents, so amounts are exact)."""
    return Decimal(sum(map(ord, meter)) % 97 + 3) / 100


def catch_all_prices() -> list[dict]:
    prices = []
    for code in Meter.objects.order_by("code").values_list("code", flat=True):
        if code == "llm_input_text_tokens":
            prices.append(
                {"meter_id": code, "price_model": "graduated", "unit_size": M, "tiers": list(GRADUATED)}
            )
        elif code == "llm_output_text_tokens":
            prices.append({"meter_id": code, "price_model": "volume", "unit_size": M, "tiers": list(VOLUME)})
        else:
            prices.append({"meter_id": code, "unit_amount": unit_price(code), "unit_size": M})
    return prices


def slices(low: Decimal, high: Decimal, tiers) -> Decimal:
    """Graduated: each unit between ``low`` and ``high`` at the price of the tier it falls in."""
    total, lower = Decimal(0), Decimal(0)
    for up_to, per_million in tiers:
        upper = high if up_to is None else min(high, up_to)
        start = max(low, lower)
        if upper > start:
            total += (upper - start) * per_million / M
        if up_to is not None:
            lower = up_to
    return total


def tier_at(reached: Decimal, tiers) -> Decimal:
    return next(rate for up_to, rate in tiers if up_to is None or reached <= up_to)


def expected_costs(tenant) -> dict[str, Decimal]:
    """Each session's cost from the stored events in receipt order (their ids), with this file's prices."""
    zone = ZoneInfo(tenant.timezone)
    position: dict[tuple, Decimal] = defaultdict(Decimal)
    costs: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(prec=60):
        for e in UsageEvent.objects.for_tenant(tenant).order_by("id"):
            period = e.timestamp.astimezone(zone).date().replace(day=1)
            for meter, raw in e.usage.items():
                q = Decimal(str(raw))
                where = (period, meter)
                if meter == "llm_input_text_tokens":
                    cost = slices(position[where], position[where] + q, GRADUATED)
                elif meter == "llm_output_text_tokens":
                    cost = q * tier_at(position[where] + q, VOLUME) / M
                else:
                    cost = q * unit_price(meter) / M
                position[where] += q
                costs[e.session_id] += cost
    return dict(costs)


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def read(client: AgentClient, session_id: str) -> dict:
    response = client.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def priced(tenant):
    subscribe(tenant, make_plan(prices=catch_all_prices()))


def test_captured_sessions_cost_what_their_usage_cost_when_it_arrived_and_never_move(
    agent_client, tenant, priced
):
    for name in SESSIONS + LEGACY_SESSIONS:
        sample = load(name)
        response = agent_client.post(
            "/api/v1/livekit/metrics", {"session_id": name, "metrics": shifted_metrics(sample)}
        )
        assert response.status_code == 200, response.content
        assert "unpriced" not in response.json()  # a catch-all price per meter: legacy usage too
    expected = expected_costs(tenant)
    assert set(expected) == set(SESSIONS + LEGACY_SESSIONS)
    first = {}
    for name in SESSIONS + LEGACY_SESSIONS:
        body = read(agent_client, name)
        assert Decimal(body["cost_precise"]) == expected[name], name
        assert Decimal(body["cost"]) == cents(expected[name]), name
        assert Decimal(body["cost_precise"]) == sum(Decimal(row["cost_precise"]) for row in body["usage"])
        assert expected[name] > 0
        first[name] = body
    # The tiers were crossed, so a call's cost depends on where the period stood when it arrived.
    assert (
        sum(Decimal(e.usage.get("llm_input_text_tokens", 0)) for e in UsageEvent.objects.for_tenant(tenant))
        > GRADUATED[1][0]
    )

    # 100 more calls arrive, in batches of ten; the four keep their cost to the last digit.
    for batch in range(10):
        events = [
            event(
                f"later-{batch}-{n}",
                session_id=f"later-{batch * 10 + n}",
                usage={
                    "llm_input_text_tokens": 700 + n,
                    "llm_output_text_tokens": 90 + batch,
                    "tts_characters": 40,
                },
            )
            for n in range(10)
        ]
        assert agent_client.post("/api/v1/events", {"events": events}).json()["accepted"] == 10
    expected = expected_costs(tenant)
    for name in SESSIONS + LEGACY_SESSIONS:
        assert read(agent_client, name) == first[name]
    for n in (0, 57, 99):
        assert Decimal(read(agent_client, f"later-{n}")["cost_precise"]) == expected[f"later-{n}"]

    # The session list and the rows agree with the session read.
    listed = {c.session_id: c for c in CallCost.objects.for_tenant(tenant)}
    assert all(c.unpriced_quantity == 0 for c in listed.values())


def test_graduated_positions_follow_receipt_order_across_sessions(agent_client, tenant):
    subscribe(
        tenant,
        make_plan(
            base_fee="0",
            prices=[
                {
                    "meter_id": "llm_input_text_tokens",
                    "price_model": "graduated",
                    "unit_size": Decimal(1000),
                    "tiers": [(Decimal(1000), "1.00"), (None, "0.50")],
                }
            ],
        ),
    )
    usage = lambda n: {"llm_input_text_tokens": n}  # noqa: E731
    agent_client.post("/api/v1/events", {"events": [event("a", session_id="first", usage=usage(900))]})
    agent_client.post("/api/v1/events", {"events": [event("b", session_id="second", usage=usage(300))]})
    # A batch is priced in event-id order: "c-1" before "c-2", whatever order it lists them in.
    later = [
        event("c-2", session_id="fourth", usage=usage(100)),
        event("c-1", session_id="third", usage=usage(50)),
    ]
    agent_client.post("/api/v1/events", {"events": later})
    costs = {
        s: Decimal(read(agent_client, s)["cost_precise"]) for s in ("first", "second", "third", "fourth")
    }
    assert costs == {
        "first": Decimal("0.9"),  # 900 at $1 per 1,000
        "second": Decimal("0.1") + Decimal("0.1"),  # 100 more at $1, then 200 at $0.50
        "third": Decimal("0.025"),
        "fourth": Decimal("0.05"),
    }
    assert read(agent_client, "first")["cost"] == "0.9"
    assert TierPosition.objects.for_tenant(tenant).get().quantity == 1350


def test_a_position_starts_from_the_usage_already_in_the_period(agent_client, tenant):
    """Usage stored before per-call costs existed (or before the first tiered price) counts toward the
    position the first batch meets."""
    plan = make_plan(base_fee="0", prices=[{"meter_id": "tts_characters", "unit_amount": Decimal("0.01")}])
    subscribe(tenant, plan)
    agent_client.post(
        "/api/v1/events", {"events": [event("old", session_id="old", usage={"tts_characters": 800})]}
    )
    version = plan.versions.get()
    price = version.prices.get()
    price.price_model = "graduated"
    price.unit_amount = 0
    price.save()
    PriceTier.objects.create(price=price, up_to=Decimal(1000), unit_amount=Decimal("0.01"))
    PriceTier.objects.create(price=price, up_to=None, unit_amount=Decimal("0.001"))
    agent_client.post(
        "/api/v1/events", {"events": [event("new", session_id="new", usage={"tts_characters": 300})]}
    )
    assert Decimal(read(agent_client, "new")["cost_precise"]) == 200 * Decimal("0.01") + 100 * Decimal(
        "0.001"
    )
    assert Decimal(read(agent_client, "old")["cost_precise"]) == 800 * Decimal("0.01")


def test_linear_prices_and_cost_plus_per_call(agent_client, tenant):
    """Per unit, package (pro rata) and cost-plus (the provider rate in force, marked up); the provider cost
    is kept beside for staff."""
    from billing.models import ProviderRate

    plan = make_plan(
        base_fee="0",
        prices=[
            {
                "meter_id": "stt_audio_seconds",
                "price_model": "package",
                "package_size": 60,
                "package_amount": "0.03",
            },
            {"meter_id": "llm_input_text_tokens", "price_model": "cost_plus", "markup": Decimal("0.25")},
            {"meter_id": "tts_characters", "unit_amount": Decimal("15"), "unit_size": M},
        ],
    )
    subscribe(tenant, plan)
    ProviderRate.objects.create(
        provider="api.openai.com",
        model_pattern="gpt-4o-mini",
        meter_id="llm_input_text_tokens",
        cost_per_unit=Decimal("0.15"),
        unit_size=M,
        currency="USD",
        effective_from=date(2026, 1, 1),
    )
    usage = {"stt_audio_seconds": "61.5", "llm_input_text_tokens": 1234, "tts_characters": 77}
    agent_client.post("/api/v1/events", {"events": [event("x", session_id="call", usage=usage)]})
    body = read(agent_client, "call")
    rows = {row["meter"]: Decimal(row["cost_precise"]) for row in body["usage"]}
    assert rows == {
        "stt_audio_seconds": Decimal("61.5") * Decimal("0.03") / 60,
        "llm_input_text_tokens": 1234 * Decimal("0.15") / M * Decimal("1.25"),
        "tts_characters": 77 * Decimal(15) / M,
    }
    assert Decimal(body["cost_precise"]) == sum(rows.values())
    row = CallCost.objects.for_tenant(tenant).get(meter="llm_input_text_tokens")
    assert row.provider_cost == 1234 * Decimal("0.15") / M
    assert CallCost.objects.for_tenant(tenant).get(meter="tts_characters").uncosted_quantity == 77


def test_unpriced_usage_costs_nothing_is_marked_and_a_rebuild_prices_it_once_a_price_exists(
    agent_client, tenant
):
    plan = make_plan(
        base_fee="0",
        prices=[{"meter_id": "tts_characters", "model_pattern": "sonic-3", "unit_amount": "0.01"}],
    )
    subscribe(tenant, plan)
    usage = {"tts_characters": 120}
    agent_client.post(
        "/api/v1/events", {"events": [event("a", session_id="s", model="sonic-2", usage=usage)]}
    )
    body = read(agent_client, "s")
    assert body["unpriced"] is True and body["cost_precise"] == "0"
    Price.objects.create(version=plan.versions.get(), meter_id="tts_characters", unit_amount=Decimal("0.02"))
    assert read(agent_client, "s")["cost_precise"] == "0"  # stored when it arrived: nothing moves by itself
    call_command("rebuild_call_costs", tenant=[tenant.slug])
    body = read(agent_client, "s")
    assert body["unpriced"] is False and Decimal(body["cost_precise"]) == 120 * Decimal("0.02")


def test_a_rebuild_reproduces_what_ingest_stored(agent_client, tenant, priced):
    for name in SESSIONS:
        agent_client.post(
            "/api/v1/livekit/metrics", {"session_id": name, "metrics": shifted_metrics(load(name))}
        )
    fields = ("session_id", "period_start", "meter", "provider", "model", "quantity", "cost", "provider_cost")
    before = sorted(CallCost.objects.for_tenant(tenant).values_list(*fields))
    positions = sorted(
        TierPosition.objects.for_tenant(tenant).values_list("period_start", "price_id", "quantity")
    )
    call_costs.rebuild(tenant)
    assert sorted(CallCost.objects.for_tenant(tenant).values_list(*fields)) == before
    assert (
        sorted(TierPosition.objects.for_tenant(tenant).values_list("period_start", "price_id", "quantity"))
        == positions
    )


def test_the_period_reconciles_calls_with_the_invoice(agent_client, tenant, client):
    """Σ call costs + rounding and period fees = the period's total; fees and minimums are named."""
    plan = make_plan(
        base_fee="49.00",
        agent_fee="5.00",
        prices=[
            {
                "meter_id": "tts_characters",
                "unit_amount": Decimal("0.013"),
                "unit_size": Decimal(1000),
                "free_allowance": 500,
            },
            {
                "meter_id": "stt_audio_seconds",
                "unit_amount": Decimal("0.01"),
                "unit_size": Decimal(60),
                "minimum_charge": Decimal("2"),
            },
        ],
    )
    subscribe(tenant, plan)
    for n in range(7):
        usage = {"tts_characters": 333 + n, "stt_audio_seconds": "12.5"}
        agent_client.post("/api/v1/events", {"events": [event(f"e{n}", session_id=f"s{n}", usage=usage)]})
    from billing import invoicing

    start, end = invoicing.current_period(tenant)
    priced_period = period_pricing.price_period(tenant, start, end)
    result = call_costs.reconcile(tenant, start, priced_period)
    calls = sum(Decimal(read(agent_client, f"s{n}")["cost_precise"]) for n in range(7))
    assert result.calls == calls
    with localcontext(prec=60):  # one event per call, kept to 20 places (1/60 does not terminate)
        each = [
            (333 + n) * Decimal("0.013") / 1000 + Decimal("12.5") * Decimal("0.01") / 60 for n in range(7)
        ]
    assert calls == sum(c.quantize(Decimal("1e-20"), rounding=ROUND_HALF_UP) for c in each)
    assert result.calls + result.period_fees == result.total == priced_period.total
    days = Decimal(periods.days_between(start, end))
    assert (result.base_fee, result.agent_fee) == (Decimal("49.00"), Decimal("5.00"))
    assert result.minimums == Decimal("2.00") - cents(7 * Decimal("12.5") * Decimal("0.01") / 60)
    # The allowance is a period amount too: the remainder holds it, and the rounding of each line.
    assert result.adjustments == result.total - calls - 49 - 5 - result.minimums
    assert days > 0
    # the dashboard shows the same reconciliation: calls + rounding and period fees = the period's spend
    from tests.factories import MembershipFactory

    client.force_login(MembershipFactory(tenant=tenant).user)
    page = client.get("/").content.decode()
    card = page[page.index('data-testid="reconciliation"') :].split("</table>")[0]
    shown = lambda name: Decimal(  # noqa: E731
        re.search(rf'data-testid="{name}"[^>]*>\$([\d,.-]+)<', card).group(1).replace(",", "")
    )
    assert shown("calls-total") == calls.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    assert shown("period-fees") == (result.total - calls).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    assert (
        "Rounding, period fees, discounts and tax" in card
        and "base fee" in card
        and "minimum charges" in card
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_never_share_a_tier_slice():
    """Twelve agents post at once to one graduated price: every unit is priced in exactly one slice, so the
    calls add up to the graduated amount of the total, and the position is the total."""
    tenant = TenantFactory()
    tiers = [(Decimal(500), "4.00"), (Decimal(2000), "2.00"), (None, "1.00")]
    subscribe(
        tenant,
        make_plan(
            base_fee="0",
            prices=[
                {
                    "meter_id": "llm_input_text_tokens",
                    "price_model": "graduated",
                    "unit_size": M,
                    "tiers": tiers,
                }
            ],
        ),
    )
    clients = [AgentClient(api_key_for(AgentFactory(tenant=tenant))) for _ in range(12)]
    barrier = threading.Barrier(len(clients))
    failures = []

    def post(index: int, client: AgentClient) -> None:
        try:
            barrier.wait()
            events = [
                event(
                    f"c{index}-{n}",
                    session_id=f"call-{index}",
                    usage={"llm_input_text_tokens": 37 + index + n},
                )
                for n in range(5)
            ]
            response = client.post("/api/v1/events", {"events": events})
            if response.status_code != 200:
                failures.append(response.content)
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    total = Decimal(sum(37 + i + n for i in range(12) for n in range(5)))
    as_million = [(up_to, Decimal(rate)) for up_to, rate in tiers]
    calls = sum(CallCost.objects.for_tenant(tenant).values_list("cost", flat=True))
    assert calls == slices(Decimal(0), total, as_million)
    assert TierPosition.objects.for_tenant(tenant).get().quantity == total
    # (Which call got which slice is the order the batches took the position's lock; a rebuild replays them
    # in event-id order, which can differ for batches that were in flight together: decision 017.)


def test_version_prices_are_loaded_once_per_batch(
    agent_client, tenant, priced, django_assert_max_num_queries
):
    events = [event(f"q{n}", session_id=f"q{n % 7}") for n in range(200)]
    with django_assert_max_num_queries(20):
        assert agent_client.post("/api/v1/events", {"events": events}).json()["accepted"] == 200
    assert PlanVersion.objects.count() == 1


def test_the_usage_explorer_grouped_by_session_shows_each_calls_own_cost(
    agent_client, tenant, priced, client
):
    """The read API, the portal's explorer and its CSV give a session the cost GET /sessions/{id} gives."""
    from tests.factories import MembershipFactory

    for name in SESSIONS:
        agent_client.post(
            "/api/v1/livekit/metrics", {"session_id": name, "metrics": shifted_metrics(load(name))}
        )
    expected = expected_costs(tenant)
    six = Decimal("0.000001")
    listed = agent_client.get("/api/v1/usage", group_by="session").json()["results"]
    by_session = {row["group"]["session"]: Decimal(row["cost"]) for row in listed}
    assert by_session == {name: expected[name].quantize(six) for name in SESSIONS}
    client.force_login(MembershipFactory(tenant=tenant).user)
    exported = b"".join(client.get("/usage.csv", {"group_by": "session"}).streaming_content).decode()
    lines = [line.split(",") for line in exported.splitlines()]
    header = lines[0]
    costs = {row[0]: Decimal(row[header.index("cost")]) for row in lines[1:]}
    assert costs == {name: expected[name].quantize(six) for name in SESSIONS}


amounts = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
sizes = st.sampled_from([Decimal(1), Decimal(3), Decimal(60), Decimal(1000), M])


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(["per_unit", "package", "cost_plus"]),
    amount=amounts,
    size=sizes,
    markup=st.decimals(min_value=0, max_value=5, places=3),
    quantities=st.lists(amounts, min_size=1, max_size=5),
)
def test_the_linear_fast_path_is_the_pricing_engines_marginal_charge(model, amount, size, markup, quantities):
    price = pricing.Price(
        meter="tts_characters",
        price_model=model,
        unit_amount=amount,
        unit_size=size,
        package_amount=amount,
        package_size=size,
        markup=markup,
    )
    rate = pricing.ProviderRate("", "", "tts_characters", amount, size)
    used = rate if model == "cost_plus" else None
    verdict = call_costs.Verdict.priced(price, used)
    # a batch's quantities of one call and key are summed, then charged once
    found = call_costs.Sorted(
        summed={("s", date(2026, 1, 1), ("tts_characters", "", ""), 0): [sum(quantities), verdict]}
    )
    totals = call_costs.Totals()
    call_costs.price_sorted(found, {}, totals)
    charged = totals.rows[("s", date(2026, 1, 1), "tts_characters", "", "")][1]
    with localcontext(prec=60):
        expected = sum((pricing.marginal_charge(price, Decimal(0), q, used) for q in quantities), Decimal(0))
    # the same amount as pricing each quantity on its own, far below the 20 places kept
    assert abs(charged - expected) < Decimal("1e-40")


@settings(max_examples=200, deadline=None)
@given(quantities=st.lists(amounts, min_size=1, max_size=8))
def test_graduated_marginal_charges_add_up_to_the_graduated_amount(quantities):
    tiers = (
        pricing.Tier(Decimal(100), Decimal(5), Decimal(7)),
        pricing.Tier(Decimal(900), Decimal(2)),
        pricing.Tier(None, Decimal(1)),
    )
    price = pricing.Price(
        meter="tts_characters", price_model="graduated", tiers=tiers, unit_size=Decimal(1000)
    )
    position, total = Decimal(0), Decimal(0)
    with localcontext(prec=60):
        for q in quantities:
            total += pricing.marginal_charge(price, position, q)
            position += q
    flatless = tuple(pricing.Tier(t.up_to, t.unit_amount) for t in tiers)
    assert total == pricing.graduated_amount(flatless, Decimal(1000), position)


def test_a_price_changed_any_way_prices_the_next_batch(agent_client, tenant):
    """Ingest keeps the plan it loaded per process while the catalogue generation holds; every kind of change
    (ORM save, queryset update, bulk insert, raw SQL) makes the next batch load it again."""
    from django.db import connection as db

    from billing.models import ProviderRate

    plan = make_plan(base_fee="0", prices=[{"meter_id": "tts_characters", "unit_amount": Decimal("1")}])
    subscribe(tenant, plan)
    price = plan.versions.get().prices.get()

    def cost_of(n: int) -> Decimal:
        agent_client.post(
            "/api/v1/events", {"events": [event(f"e{n}", session_id=f"s{n}", usage={"tts_characters": 1})]}
        )
        return Decimal(read(agent_client, f"s{n}")["cost_precise"])

    assert cost_of(1) == 1
    Price.objects.filter(pk=price.pk).update(unit_amount=Decimal("2"))
    assert cost_of(2) == 2
    with db.cursor() as cursor:
        cursor.execute("UPDATE billing_price SET unit_amount = 3 WHERE id = %s", [price.pk])
    assert cost_of(3) == 3
    Price.objects.filter(pk=price.pk).update(price_model="cost_plus", markup=Decimal("0.5"))
    ProviderRate.objects.bulk_create(
        [
            ProviderRate(
                provider="",
                model_pattern="",
                meter_id="tts_characters",
                cost_per_unit=Decimal("4"),
                effective_from=date(2026, 1, 1),
            )
        ]
    )
    assert cost_of(4) == 6
