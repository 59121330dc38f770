"""Pricing (DESIGN §5, §6): hand-computed invoices, then properties that must hold for any plan and usage.

No database: ``billing.pricing`` is pure, so these tests build its dataclasses directly.
"""

import fnmatch
from dataclasses import replace
from datetime import date
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing import (
    LineKind,
    Plan,
    Price,
    PriceModel,
    ProviderRate,
    Tier,
    UnmatchedReason,
    UsageKey,
    charge_for,
    currency_exponent,
    graduated_amount,
    match_price,
    match_rate,
    price_usage,
    round_money,
    specificity,
    to_minor_units,
    volume_amount,
)

ON = date(2026, 11, 1)


def aggregate_usage(rows) -> dict[UsageKey, D]:
    """Sum ``(meter, provider, model, quantity)`` rows per key, as the rollups do for a period."""
    totals: dict[UsageKey, D] = {}
    for meter, provider, model, quantity in rows:
        key = UsageKey(meter, provider, model)
        totals[key] = totals.get(key, D(0)) + D(quantity)
    return totals


PER_MILLION = D(1_000_000)

TEXT = UsageKey("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini")
CACHED = UsageKey("llm_input_cached_text_tokens", "api.openai.com", "gpt-4o-mini")
OUTPUT = UsageKey("llm_output_text_tokens", "api.openai.com", "gpt-4o-mini")
TTS = UsageKey("tts_characters", "Cartesia", "sonic-3")
STT = UsageKey("stt_audio_seconds", "Deepgram", "nova-3")

# tests/data/livekit/pipeline_deepgram_openai_cartesia.json, session_usage_updated_final, mapped by DESIGN §3:
# text = input_tokens 18121 − input_cached_tokens 15744.
PIPELINE_SESSION = {TEXT: D(2377), CACHED: D(15744), OUTPUT: D(284), TTS: D(943), STT: D("118.78")}

# List prices (docs: shared notes, livekit-metrics.md §8.2): gpt-4o-mini $0.15 / $0.075 / $0.60 per 1M,
# Cartesia sonic-3 $50 per 1M characters (Pro plan credits), Deepgram nova-3 $0.0077 per minute (PAYG).
LIST_PRICES = [
    (TEXT, D("0.15"), PER_MILLION),
    (CACHED, D("0.075"), PER_MILLION),
    (OUTPUT, D("0.60"), PER_MILLION),
    (TTS, D(50), PER_MILLION),
    (STT, D("0.0077"), D(60)),
]


def list_price_plan(currency: str = "USD", **plan_fields) -> Plan:
    prices = [
        Price(key.meter, PriceModel.PER_UNIT, key.provider, key.model, unit_amount=amount, unit_size=size)
        for key, amount, size in LIST_PRICES
    ]
    return Plan(currency, prices, **plan_fields)


def provider_catalogue() -> list[ProviderRate]:
    return [
        ProviderRate(key.provider, key.model, key.meter, amount, size, date(2026, 1, 1))
        for key, amount, size in LIST_PRICES
    ]


def price(plan: Plan, usage, *, agents: int = 0, rates=(), on: date = ON):
    return price_usage(plan, usage, active_agents=agents, provider_rates=list(rates), on=on)


def line_for(invoice, key):
    (line,) = [x for x in invoice.lines if x.kind is LineKind.USAGE and (x.meter, x.provider, x.model) == key]
    return line


# Hand-computed examples


def test_pipeline_session_rounds_each_line_once_and_totals_the_rounded_lines():
    invoice = price(list_price_plan(), PIPELINE_SESSION)

    assert line_for(invoice, TEXT).unrounded_amount == D("0.00035655")  # 2377 × 0.15 / 1M
    assert line_for(invoice, CACHED).unrounded_amount == D("0.0011808")  # 15744 × 0.075 / 1M
    assert line_for(invoice, OUTPUT).unrounded_amount == D("0.0001704")  # 284 × 0.60 / 1M
    assert line_for(invoice, TTS).unrounded_amount == D("0.04715")  # 943 × 50 / 1M
    stt = line_for(invoice, STT)
    assert round(stt.unrounded_amount, 12) == D("0.015243433333")  # 118.78 s / 60 × 0.0077
    assert [line.amount for line in invoice.lines] == [D("0.00"), D("0.00"), D("0.00"), D("0.02"), D("0.05")]
    # The unrounded sum is 0.0641…; the customer pays the sum of what the lines show.
    assert invoice.total == D("0.07")
    assert (stt.quantity, stt.unit_price, stt.unit_size) == (D("118.78"), D("0.0077"), D(60))
    assert invoice.unmatched == ()


def test_cost_plus_bills_provider_list_cost_with_markup_and_reports_platform_cost():
    prices = [Price(key.meter, "cost_plus", markup=D("0.20")) for key, _, _ in LIST_PRICES]
    invoice = price(Plan("USD", prices), PIPELINE_SESSION, rates=provider_catalogue())

    tts = line_for(invoice, TTS)
    assert tts.unrounded_amount == D("0.056580")  # 0.04715 × 1.2
    assert (tts.amount, tts.platform_cost) == (D("0.06"), D("0.05"))
    assert tts.unit_price == D(60)  # per 1M characters, markup included
    assert line_for(invoice, STT).amount == D("0.02")  # 0.0182921…
    assert invoice.total == D("0.08")
    assert invoice.platform_cost == D("0.07")
    assert invoice.uncosted == ()


def test_half_a_cent_rounds_up_not_to_even():
    invoice = price(list_price_plan(), {TTS: D(2500)})  # 2500 × 50 / 1M = 0.125

    assert invoice.total == D("0.13")


def test_zero_decimal_currency_rounds_to_whole_yen():
    plan = Plan(
        "jpy",
        [
            Price("tts_characters", "per_unit", unit_amount=D("7.5"), unit_size=1000),
            Price("stt_audio_seconds", "per_unit", unit_amount=D(1), unit_size=60),
        ],
    )
    invoice = price(plan, {TTS: D(943), STT: D(30)})  # ¥7.0725 and exactly ¥0.5

    assert [line.amount for line in invoice.lines] == [D(1), D(7)]
    assert invoice.total == D(8)
    assert invoice.currency == "JPY"
    assert to_minor_units(invoice.total, "JPY") == 8


def test_currency_exponents_follow_iso_4217():
    assert [currency_exponent(c) for c in ("USD", "EUR", "JPY", "KRW", "KWD", "chf")] == [2, 2, 0, 0, 3, 2]
    assert round_money(D("1.2345"), "KWD") == D("1.235")
    assert to_minor_units(D("12.34"), "USD") == 1234
    with pytest.raises(ValueError, match="minor unit"):
        to_minor_units(D("12.345"), "USD")
    with pytest.raises(ValueError, match="ISO 4217"):
        currency_exponent("US")


TOKEN_TIERS = (
    Tier(up_to=D(1_000_000), unit_amount=D("0.60")),
    Tier(up_to=D(10_000_000), unit_amount=D("0.50")),
    Tier(up_to=None, unit_amount=D("0.40")),
)


def test_graduated_prices_each_slice_and_volume_prices_everything_at_the_reached_tier():
    usage = {OUTPUT: D(12_500_000)}
    graduated = Price(OUTPUT.meter, "graduated", tiers=TOKEN_TIERS, unit_size=PER_MILLION)
    volume = replace(graduated, price_model=PriceModel.VOLUME)

    # 1M × 0.60 + 9M × 0.50 + 2.5M × 0.40 against 12.5M × 0.40
    assert price(Plan("USD", [graduated]), usage).total == D("6.10")
    assert price(Plan("USD", [volume]), usage).total == D("5.00")
    line = line_for(price(Plan("USD", [graduated]), usage), OUTPUT)
    assert line.unit_price == D("0.488")  # average per 1M tokens, for display


def test_tier_flat_amounts_are_charged_for_each_tier_entered():
    tiers = [Tier(D(100), flat_amount=D(5)), Tier(None, unit_amount=D("0.02"), flat_amount=D(1))]
    graduated = Price("session_seconds", "graduated", tiers=tiers)
    volume = Price("session_seconds", "volume", tiers=tiers)

    assert charge_for(graduated, D(150)) == D("7.00")  # 5 + 50 × 0.02 + 1
    assert charge_for(volume, D(150)) == D("4.00")  # 150 × 0.02 + 1
    assert charge_for(graduated, D(80)) == charge_for(volume, D(80)) == D(5)
    assert charge_for(graduated, D(0)) == charge_for(volume, D(0)) == 0


def test_package_bills_every_started_block_after_the_allowance():
    package = Price("tts_characters", "package", package_size=1000, package_amount=D(1))

    assert price(Plan("USD", [package]), {TTS: D(2500)}).total == D("3.00")
    assert price(Plan("USD", [replace(package, free_allowance=D(500))]), {TTS: D(2500)}).total == D("2.00")
    assert price(Plan("USD", [replace(package, free_allowance=D(600))]), {TTS: D(2500)}).total == D("2.00")
    assert price(Plan("USD", [replace(package, free_allowance=D(2500))]), {TTS: D(2500)}).total == D("0.00")


def test_free_allowance_is_shared_by_every_model_the_price_matches():
    elevenlabs = UsageKey("tts_characters", "ElevenLabs", "eleven_flash_v2_5")
    catch_all = Price(
        "tts_characters", "per_unit", unit_amount=D(50), unit_size=PER_MILLION, free_allowance=1000
    )
    invoice = price(Plan("USD", [catch_all]), {TTS: D(600), elevenlabs: D(900)})

    cartesia, eleven = line_for(invoice, TTS), line_for(invoice, elevenlabs)
    assert (cartesia.allowance, cartesia.billable_quantity) == (D(400), D(200))
    assert (eleven.allowance, eleven.billable_quantity) == (D(600), D(300))
    assert cartesia.unrounded_amount + eleven.unrounded_amount == D("0.025")  # 500 × 50 / 1M


def test_minimum_charge_tops_up_a_price_that_saw_usage():
    stt = Price("stt_audio_seconds", "per_unit", unit_amount=D("0.0077"), unit_size=60, minimum_charge=D(5))
    invoice = price(Plan("USD", [stt]), {STT: D("118.78")})

    assert [(line.kind, line.amount) for line in invoice.lines] == [
        (LineKind.USAGE, D("0.02")),
        (LineKind.MINIMUM, D("4.98")),
    ]
    assert invoice.total == D("5.00")


def test_minimum_charge_applies_even_when_the_allowance_covers_the_usage_but_not_without_usage():
    stt = Price("stt_audio_seconds", "per_unit", unit_amount=D(1), free_allowance=600, minimum_charge=D(5))

    assert price(Plan("USD", [stt]), {STT: D(10)}).total == D("5.00")
    assert price(Plan("USD", [stt]), {STT: D(0)}).lines == ()
    assert price(Plan("USD", [stt]), {}).total == D("0.00")


def test_minimum_charge_does_nothing_once_usage_exceeds_it():
    stt = Price("stt_audio_seconds", "per_unit", unit_amount=D(1), minimum_charge=D(5))
    invoice = price(Plan("USD", [stt]), {STT: D(7)})

    assert [line.kind for line in invoice.lines] == [LineKind.USAGE]
    assert invoice.total == D("7.00")


def test_base_fee_and_active_agent_fee_are_lines_of_their_own():
    invoice = price(list_price_plan(base_fee=D(49), fee_per_active_agent=D("9.99")), {}, agents=3)

    assert [(line.kind, line.quantity, line.amount) for line in invoice.lines] == [
        (LineKind.BASE_FEE, D(1), D("49.00")),
        (LineKind.AGENT_FEE, D(3), D("29.97")),
    ]
    assert invoice.total == D("78.97")
    assert [line.kind for line in price(list_price_plan(fee_per_active_agent=D(9)), {}).lines] == []


def test_usage_without_a_price_is_reported_not_billed_as_zero():
    gemini = UsageKey("llm_input_audio_tokens", "Gemini", "gemini-2.5-flash-native-audio")
    invoice = price(list_price_plan(), {TTS: D(943), gemini: D(3047)})

    assert [(u.key, u.quantity, u.reason) for u in invoice.unmatched] == [
        (gemini, D(3047), UnmatchedReason.NO_PRICE)
    ]
    assert [(line.meter, line.provider) for line in invoice.lines] == [("tts_characters", "Cartesia")]


def test_cost_plus_without_a_provider_rate_in_the_plan_currency_is_unmatched():
    eur_plan = Plan("EUR", [Price("tts_characters", "cost_plus", markup=D("0.5"))])
    invoice = price(eur_plan, {TTS: D(943)}, rates=provider_catalogue())  # the catalogue is in USD

    assert [(u.key, u.reason) for u in invoice.unmatched] == [(TTS, UnmatchedReason.NO_PROVIDER_RATE)]
    assert invoice.lines == ()


def test_usage_without_a_provider_rate_is_priced_but_flagged_as_uncosted():
    invoice = price(list_price_plan(), {TTS: D(943), STT: D(60)}, rates=provider_catalogue()[:3])

    assert [line.platform_cost for line in invoice.lines] == [None, None]
    assert invoice.uncosted == (STT, TTS)
    assert invoice.total == D("0.06")


def test_most_specific_price_wins_model_over_provider_over_any():
    meter = "llm_output_text_tokens"
    prices = [
        Price(meter, "per_unit", unit_amount=D(1), id="any"),
        Price(meter, "per_unit", "api.openai.com", unit_amount=D(1), id="openai"),
        Price(meter, "per_unit", model_pattern="gpt-4o*", unit_amount=D(1), id="gpt-4o*"),
        Price(meter, "per_unit", model_pattern="gpt-4o-mini*", unit_amount=D(1), id="gpt-4o-mini*"),
        Price(meter, "per_unit", model_pattern="gpt-4o-mini", unit_amount=D(1), id="exact"),
        Price(meter, "per_unit", "api.openai.com", "gpt-4o-mini", unit_amount=D(1), id="openai exact"),
    ]
    chosen = {
        model_or_provider: match_price(prices, UsageKey(meter, *model_or_provider)).id
        for model_or_provider in [
            ("api.openai.com", "gpt-4o-mini"),
            ("API.OpenAI.com", "GPT-4o-mini"),
            ("azure", "gpt-4o-mini"),
            ("api.openai.com", "gpt-4o-mini-2024-07-18"),
            ("api.openai.com", "gpt-4o"),
            ("api.openai.com", "gpt-4.1"),
            ("api.anthropic.com", "claude-sonnet-4-6"),
        ]
    }

    assert list(chosen.values()) == [
        "openai exact",
        "openai exact",
        "exact",
        "gpt-4o-mini*",
        "gpt-4o*",
        "openai",
        "any",
    ]
    assert match_price(prices, UsageKey("tts_characters", "Cartesia", "sonic-3")) is None


def test_specificity_counts_only_literal_characters_of_the_pattern():
    assert specificity("", "nova-[23]") == (5, False, False)
    assert specificity("Deepgram", "nova-3") == (6, True, True)
    assert specificity("Deepgram", "") < specificity("", "n*")
    assert specificity("", "*") == specificity("", "")


def test_provider_rate_in_force_is_the_latest_version_of_the_most_specific_series():
    rates = [
        ProviderRate("Deepgram", "nova-*", "stt_audio_seconds", D("0.0059"), 60, date(2026, 1, 1)),
        ProviderRate("Deepgram", "nova-*", "stt_audio_seconds", D("0.0077"), 60, date(2026, 6, 1)),
        ProviderRate("Deepgram", "nova-*", "stt_audio_seconds", D("0.0099"), 60, date(2027, 1, 1)),
        ProviderRate("Deepgram", "", "stt_audio_seconds", D("0.0200"), 60, date(2026, 9, 1)),
    ]

    def cost_on(day):
        return match_rate(rates, STT, on=day, currency="USD").cost_per_unit

    assert [cost_on(date(2026, 3, 1)), cost_on(ON)] == [D("0.0059"), D("0.0077")]
    assert match_rate(rates, STT, on=date(2025, 12, 31), currency="USD") is None
    assert match_rate(rates, STT, on=ON, currency="EUR") is None


def test_volume_pricing_can_charge_more_when_the_allowance_grows():
    """The one price model where allowance monotonicity does not hold: volume tiers are not monotone."""
    tiers = [Tier(D(1000), unit_amount=D(1)), Tier(None, unit_amount=D("0.5"))]
    volume = Price("session_seconds", "volume", tiers=tiers)
    usage = {UsageKey("session_seconds", "", ""): D(1001)}

    assert price(Plan("USD", [volume]), usage).total == D("500.50")
    assert price(Plan("USD", [replace(volume, free_allowance=D(2))]), usage).total == D("999.00")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Price("m", "graduated"), "at least one"),
        (lambda: Price("m", "volume", tiers=[Tier(D(10))]), "unbounded"),
        (lambda: Price("m", "volume", tiers=[Tier(D(10)), Tier(D(5)), Tier(None)]), "increase"),
        (lambda: Price("m", "per_unit", tiers=[Tier(None)]), "no tiers"),
        (lambda: Price("m", "per_unit", unit_size=0), "unit_size"),
        (lambda: Price("m", "flat_rate"), "flat_rate"),
        (lambda: Price("m", "per_unit", unit_amount=D(-1)), "unit_amount"),
        (
            lambda: Plan("USD", [Price("m", "per_unit", "Deepgram"), Price("m", "package", "deepgram")]),
            "same",
        ),
        (lambda: price(list_price_plan(), {TTS: D(-1)}), "quantity"),
        (lambda: price(list_price_plan(), {}, agents=-1), "active_agents"),
        (lambda: price(list_price_plan(), {}, rates=provider_catalogue() * 2), "provider rates"),
    ],
)
def test_invalid_plans_and_inputs_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_floats_are_refused_for_money():
    with pytest.raises(TypeError, match="float"):
        Price("m", "per_unit", unit_amount=0.6)


# Properties

METERS = ["llm_output_text_tokens", "tts_characters", "stt_audio_seconds"]
PROVIDERS = ["", "api.openai.com", "Deepgram", "Cartesia"]
MODELS = ["", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o", "sonic-3", "nova-3"]
PATTERNS = ["", "*", "gpt-4o*", "gpt-4o-mini*", "GPT-4o-mini", "sonic-?", "nova-[23]", "*mini*", "sonic-3"]
CURRENCIES = ["USD", "EUR", "JPY", "KRW", "KWD"]

quantities = st.decimals(min_value=0, max_value=10**12, places=6)
positive_quantities = st.decimals(min_value=D("0.000001"), max_value=10**9, places=6)
money = st.decimals(min_value=0, max_value=1000, places=4)
unit_sizes = st.sampled_from([D(1), D(60), D(1000), PER_MILLION])
usage_keys = st.builds(UsageKey, st.sampled_from(METERS), st.sampled_from(PROVIDERS), st.sampled_from(MODELS))
usage_rows = st.lists(st.tuples(usage_keys, quantities), max_size=12)


def scope(price_or_rate):
    return (price_or_rate.meter, price_or_rate.provider.casefold(), price_or_rate.model_pattern.casefold())


@st.composite
def tier_lists(draw, unit_amounts=money, flat_amounts=money):
    bounds = sorted(draw(st.lists(positive_quantities, unique=True, max_size=4)))
    count = len(bounds) + 1
    amounts = draw(st.lists(unit_amounts, min_size=count, max_size=count))
    flats = draw(st.lists(flat_amounts, min_size=count, max_size=count))
    return tuple(Tier(*tier) for tier in zip([*bounds, None], amounts, flats, strict=True))


@st.composite
def prices(draw, meters=METERS, price_models=tuple(PriceModel)):
    price_model = draw(st.sampled_from(price_models))
    fields = {
        "meter": draw(st.sampled_from(meters)),
        "price_model": price_model,
        "provider": draw(st.sampled_from(PROVIDERS)),
        "model_pattern": draw(st.sampled_from(PATTERNS)),
        "free_allowance": draw(st.one_of(st.just(D(0)), quantities)),
        "minimum_charge": draw(st.one_of(st.just(D(0)), money)),
        "unit_size": draw(unit_sizes),
    }
    if price_model is PriceModel.PER_UNIT:
        fields["unit_amount"] = draw(money)
    elif price_model in (PriceModel.GRADUATED, PriceModel.VOLUME):
        fields["tiers"] = draw(tier_lists())
    elif price_model is PriceModel.PACKAGE:
        fields["package_size"] = draw(positive_quantities)
        fields["package_amount"] = draw(money)
    else:
        fields["markup"] = draw(st.decimals(min_value=0, max_value=3, places=3))
    return Price(**fields)


def rates(currency: str):
    rate = st.builds(
        ProviderRate,
        provider=st.sampled_from(PROVIDERS),
        model_pattern=st.sampled_from(PATTERNS),
        meter=st.sampled_from(METERS),
        cost_per_unit=money,
        unit_size=unit_sizes,
        effective_from=st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 1, 1)),
        currency=st.sampled_from([currency, currency, "USD"]),
    )
    return st.lists(rate, max_size=8, unique_by=lambda r: (*scope(r), r.currency, r.effective_from))


@st.composite
def billing_inputs(draw, currencies=CURRENCIES):
    """A plan, a provider catalogue, usage rows (as events would arrive) and an active agent count."""
    plan = Plan(
        draw(st.sampled_from(currencies)),
        draw(st.lists(prices(), max_size=8, unique_by=scope)),
        base_fee=draw(st.one_of(st.just(D(0)), money)),
        fee_per_active_agent=draw(st.one_of(st.just(D(0)), money)),
    )
    rows = [(*key, quantity) for key, quantity in draw(usage_rows)]
    return plan, draw(rates(plan.currency)), rows, draw(st.integers(min_value=0, max_value=50))


def invoice_for(plan, catalogue, rows, agents):
    return price(plan, aggregate_usage(rows), agents=agents, rates=catalogue)


@given(billing_inputs())
def test_total_is_the_sum_of_the_rounded_lines_each_rounded_once(inputs):
    invoice = invoice_for(*inputs)

    assert invoice.total == sum(line.amount for line in invoice.lines)
    for line in invoice.lines:
        if line.kind is not LineKind.MINIMUM:
            assert line.amount == round_money(line.unrounded_amount, invoice.currency)
        assert line.amount >= 0


@given(billing_inputs())
def test_every_amount_is_a_whole_number_of_minor_units(inputs):
    invoice = invoice_for(*inputs)
    exponent = -currency_exponent(invoice.currency)

    amounts = [invoice.total, invoice.platform_cost]
    amounts += [line.amount for line in invoice.lines] + [line.platform_cost for line in invoice.lines]
    amounts += [u.platform_cost for u in invoice.unmatched]
    for amount in (a for a in amounts if a is not None):
        assert amount.as_tuple().exponent == exponent
        assert to_minor_units(amount, invoice.currency) == amount.scaleb(-exponent)


@given(billing_inputs(currencies=["JPY", "KRW"]))
def test_zero_decimal_currency_lines_are_integral(inputs):
    invoice = invoice_for(*inputs)

    for line in invoice.lines:
        assert line.amount == line.amount.to_integral_value()
        assert line.amount.as_tuple().exponent == 0
    assert invoice.total.as_tuple().exponent == 0


@settings(deadline=None)
@given(billing_inputs(), st.data())
def test_invoice_does_not_depend_on_the_order_or_batching_of_events(inputs, data):
    plan, catalogue, rows, agents = inputs
    split_rows = []
    for *key, quantity in rows:
        part = data.draw(st.decimals(min_value=0, max_value=quantity, places=6))
        split_rows += [(*key, part), (*key, quantity - part)]
    reordered_rows = data.draw(st.permutations(split_rows))
    reordered_plan = replace(plan, prices=data.draw(st.permutations(plan.prices)))
    reordered_catalogue = data.draw(st.permutations(catalogue))

    assert invoice_for(reordered_plan, reordered_catalogue, reordered_rows, agents) == invoice_for(*inputs)


@given(billing_inputs())
def test_every_unit_of_usage_is_either_on_a_line_or_reported_unmatched(inputs):
    plan, _, rows, _ = inputs
    invoice = invoice_for(*inputs)
    usage = {key: quantity for key, quantity in aggregate_usage(rows).items() if quantity}

    on_lines = {
        UsageKey(x.meter, x.provider, x.model): x.quantity for x in invoice.lines if x.kind == "usage"
    }
    unmatched = {u.key: u.quantity for u in invoice.unmatched}
    assert not on_lines.keys() & unmatched.keys()
    assert on_lines | unmatched == usage
    for key in unmatched:
        chosen = match_price(plan.prices, key)
        assert chosen is None or chosen.price_model is PriceModel.COST_PLUS


@st.composite
def falling_tiers(draw, rising: bool = False):
    tiers = draw(tier_lists(flat_amounts=st.just(D(0))))
    amounts = sorted((tier.unit_amount for tier in tiers), reverse=not rising)
    return tuple(replace(tier, unit_amount=amount) for tier, amount in zip(tiers, amounts, strict=True))


@given(falling_tiers(), unit_sizes, quantities)
def test_graduated_never_charges_less_than_volume_when_unit_prices_fall_and_tiers_have_no_flat_fee(
    tiers, unit_size, quantity
):
    """Volume gives every unit the (lowest) price of the tier reached; graduated charges earlier, dearer tiers."""
    assert graduated_amount(tiers, unit_size, quantity) >= volume_amount(tiers, unit_size, quantity)

    graduated = Price(OUTPUT.meter, "graduated", tiers=tiers, unit_size=unit_size)
    volume = replace(graduated, price_model=PriceModel.VOLUME)
    assert (
        price(Plan("USD", [graduated]), {OUTPUT: quantity}).total
        >= price(Plan("USD", [volume]), {OUTPUT: quantity}).total
    )


@given(falling_tiers(rising=True), unit_sizes, quantities)
def test_graduated_never_charges_more_than_volume_when_unit_prices_rise_and_tiers_have_no_flat_fee(
    tiers, unit_size, quantity
):
    assert graduated_amount(tiers, unit_size, quantity) <= volume_amount(tiers, unit_size, quantity)


@given(money, unit_sizes, quantities)
def test_a_single_tier_prices_like_per_unit(unit_amount, unit_size, quantity):
    per_unit = Price("m", "per_unit", unit_amount=unit_amount, unit_size=unit_size)
    tiers = (Tier(None, unit_amount),)

    assert graduated_amount(tiers, unit_size, quantity) == charge_for(per_unit, quantity)
    assert volume_amount(tiers, unit_size, quantity) == charge_for(per_unit, quantity)


MONOTONE_MODELS = [PriceModel.PER_UNIT, PriceModel.GRADUATED, PriceModel.PACKAGE, PriceModel.COST_PLUS]


@settings(deadline=None)
@given(
    prices(meters=["tts_characters"], price_models=MONOTONE_MODELS),
    st.lists(st.tuples(st.sampled_from(MODELS), quantities), max_size=5),
    quantities,
    quantities,
    st.sampled_from(CURRENCIES),
)
def test_more_allowance_never_raises_the_amount_except_under_volume_pricing(
    tts_price, model_quantities, allowance, extra_allowance, currency
):
    base = replace(tts_price, provider="", model_pattern="", free_allowance=allowance)
    catalogue = [ProviderRate("", "", "tts_characters", D(50), PER_MILLION, currency=currency)]
    usage = aggregate_usage(("tts_characters", "Cartesia", model, q) for model, q in model_quantities)

    less = price(Plan(currency, [base]), usage, rates=catalogue)
    more = price(
        Plan(currency, [replace(base, free_allowance=allowance + extra_allowance)]), usage, rates=catalogue
    )

    assert more.total <= less.total
    for before, after in zip(less.lines, more.lines, strict=False):
        if before.kind is LineKind.USAGE:
            assert after.unrounded_amount <= before.unrounded_amount
            assert after.allowance >= before.allowance


@given(prices(), usage_rows, st.sampled_from(CURRENCIES))
def test_minimum_charge_is_a_floor_for_a_price_that_saw_usage(any_price, rows, currency):
    minimum = any_price.minimum_charge
    plan = Plan(currency, [replace(any_price, id="p")])
    catalogue = [ProviderRate("", "", meter, D(1), currency=currency) for meter in METERS]
    invoice = price(plan, aggregate_usage((*key, q) for key, q in rows), rates=catalogue)

    usage_lines = [line for line in invoice.lines if line.kind is LineKind.USAGE]
    if any(line.quantity for line in usage_lines):
        charged = sum(line.amount for line in usage_lines)
        assert invoice.total == max(charged, round_money(minimum, currency))
    else:
        assert invoice.lines == ()


def matches(candidate, key):
    """An independent reading of the matching rule: meter equal, provider and model glob case-insensitive."""
    return (
        candidate.meter == key.meter
        and candidate.provider.casefold() in ("", key.provider.casefold())
        and (
            not candidate.model_pattern
            or fnmatch.fnmatchcase(key.model.lower(), candidate.model_pattern.lower())
        )
    )


@given(st.lists(prices(), max_size=10, unique_by=scope), usage_keys, st.data())
def test_the_most_specific_matching_price_wins_whatever_the_order(plan_prices, key, data):
    chosen = match_price(plan_prices, key)
    candidates = [p for p in plan_prices if matches(p, key)]

    assert match_price(data.draw(st.permutations(plan_prices)), key) == chosen
    if not candidates:
        assert chosen is None
        return
    assert chosen in candidates
    best = max(specificity(p.provider, p.model_pattern) for p in candidates)
    assert specificity(chosen.provider, chosen.model_pattern) == best
    if any(p.model_pattern.casefold() == key.model.casefold() != "" for p in candidates):
        assert chosen.model_pattern.casefold() == key.model.casefold()
