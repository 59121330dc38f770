"""The order of operations (billing.settlement, decision 019): usage lines → discounts → tax → prepaid credit →
amount due, property-tested against arithmetic written here in integers of minor units."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.settlement import Discount, Line, Tax, settle

EXPONENT = {"USD": 2, "JPY": 0, "KWD": 3}


def half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) half away from zero, for non-negative values, in integers."""
    assert numerator >= 0 and denominator > 0
    return (2 * numerator + denominator) // (2 * denominator)


def minor(amount: Decimal, currency: str) -> int:
    scaled = amount.scaleb(EXPONENT[currency])
    assert scaled == scaled.to_integral_value(), f"{amount} is not in whole minor units of {currency}"
    return int(scaled)


currencies = st.sampled_from(sorted(EXPONENT))
groups = st.sampled_from([("usage", "tts"), ("usage", "llm"), ("usage", "stt"), ("base_fee",)])


@st.composite
def invoices(draw):
    currency = draw(currencies)
    cents = draw(st.lists(st.integers(-50_000, 5_000_000), min_size=0, max_size=12))
    lines = [Line(Decimal(c).scaleb(-EXPONENT[currency]), draw(groups)) for c in cents]
    return currency, lines


percents = st.integers(0, 10_000).map(lambda bp: Decimal(bp) / 100)  # 0.00 … 100.00 %


@given(invoices(), st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_plain_lines_total_their_sum_whatever_their_order(invoice, rng):
    currency, lines = invoice
    shuffled = list(lines)
    rng.shuffle(shuffled)
    settled = settle(lines, currency)
    assert minor(settled.total, currency) == sum(minor(line.amount, currency) for line in lines)
    assert settled == settle(shuffled, currency)
    assert settled.amount_due == settled.total and settled.discounts == () and settled.taxes == ()


@given(invoices(), percents)
@settings(max_examples=300)
def test_a_percentage_discount_takes_that_share_of_the_positive_lines_rounded_once(invoice, percent):
    currency, lines = invoice
    settled = settle(lines, currency, discounts=[Discount("promo", percent=percent)])
    positive = sum(minor(line.amount, currency) for line in lines if line.amount > 0)
    basis_points = int(percent * 100)
    expected = half_up(positive * basis_points, 10_000)
    (discount,) = settled.discounts
    assert -minor(discount.amount, currency) == expected
    assert minor(settled.total, currency) == sum(minor(line.amount, currency) for line in lines) - expected


@given(
    invoices(), st.lists(st.tuples(st.booleans(), st.integers(0, 3_000_000), percents, groups), max_size=4)
)
@settings(max_examples=300)
def test_discounts_never_take_more_than_their_lines_carry_and_never_depend_on_line_order(invoice, specs):
    currency, lines = invoice
    discounts = [
        Discount(
            f"d{n}",
            percent=percent if is_percent else None,
            amount=None if is_percent else Decimal(cents).scaleb(-EXPONENT[currency]),
            applies_to=(lambda g, only=group: g == only) if n % 2 else None,
        )
        for n, (is_percent, cents, percent, group) in enumerate(specs)
    ]
    settled = settle(lines, currency, discounts=discounts)
    shuffled = list(lines)
    random.Random(len(lines)).shuffle(shuffled)
    assert settle(shuffled, currency, discounts=discounts) == settled
    positive = sum(minor(line.amount, currency) for line in lines if line.amount > 0)
    taken = 0
    for discount, spec in zip(settled.discounts, specs, strict=True):
        take = -minor(discount.amount, currency)
        covered = sum(
            minor(line.amount, currency)
            for line in lines
            if line.amount > 0
            and (discount.name == "d0" or int(discount.name[1:]) % 2 == 0 or line.group == spec[3])
        )
        assert 0 <= take <= covered
        if not spec[0]:
            assert take <= spec[1]
        taken += take
    assert taken <= positive  # together never below zero
    negative = sum(minor(line.amount, currency) for line in lines if line.amount < 0)
    assert minor(settled.total, currency) >= negative


@given(
    invoices(),
    percents,
    st.integers(0, 2_700).map(lambda bp: Decimal(bp) / 10_000),
    st.sampled_from(["exclusive", "inclusive", "reverse"]),
)
@settings(max_examples=300)
def test_tax_is_computed_once_on_the_discounted_amount(invoice, percent, rate, kind):
    currency, lines = invoice
    tax = Tax("VAT", rate, inclusive=kind == "inclusive", reverse_charge=kind == "reverse")
    settled = settle(lines, currency, discounts=[Discount("promo", percent=percent)], tax=tax)
    discounted = sum(minor(line.amount, currency) for line in lines) + minor(
        settled.discounts[0].amount, currency
    )
    base = max(discounted, 0)
    (line,) = settled.taxes
    assert minor(line.base, currency) == base
    rate_ppm = int(rate * 1_000_000)
    if kind == "exclusive":
        expected = half_up(base * rate_ppm, 1_000_000)
        assert minor(settled.total, currency) == discounted + expected
    elif kind == "inclusive":
        net = Decimal(base) / (1 + rate)  # the price without the tax it contains
        expected = int((Decimal(base) - net).quantize(Decimal(1), rounding="ROUND_HALF_UP"))
        assert minor(settled.total, currency) == discounted  # already in the prices
    else:
        expected = 0
        assert minor(settled.total, currency) == discounted
    assert minor(line.amount, currency) == expected


@given(invoices(), st.integers(0, 10_000_000), st.sampled_from([None, Decimal("0.2"), Decimal("0.075")]))
@settings(max_examples=300)
def test_credit_pays_up_to_the_taxed_total_and_never_below_zero(invoice, credit_cents, rate):
    currency, lines = invoice
    credit = Decimal(credit_cents).scaleb(-EXPONENT[currency])
    tax = Tax("VAT", rate) if rate is not None else None
    settled = settle(lines, currency, tax=tax, credit_available=credit)
    total = minor(settled.total, currency)
    applied = minor(settled.credits_applied, currency)
    assert applied == min(credit_cents, max(total, 0))
    assert minor(settled.amount_due, currency) == total - applied
    if total >= 0:
        assert settled.amount_due >= 0


def test_a_worked_example():
    """$120 of TTS and $80 of LLM, 10 % off everything then $5 off TTS, 20 % VAT, $50 of credit."""
    lines = [Line(Decimal("120.00"), ("usage", "tts")), Line(Decimal("80.00"), ("usage", "llm"))]
    settled = settle(
        lines,
        "USD",
        discounts=[
            Discount("10 % off", percent=Decimal(10)),
            Discount("$5 off TTS", amount=Decimal(5), applies_to=lambda g: g == ("usage", "tts")),
        ],
        tax=Tax("VAT 20 %", Decimal("0.2")),
        credit_available=Decimal(50),
    )
    assert [d.amount for d in settled.discounts] == [Decimal("-20.00"), Decimal("-5.00")]
    assert settled.discounted == Decimal("175.00")
    assert settled.taxes[0].amount == Decimal("35.00")
    assert settled.total == Decimal("210.00")
    assert (settled.credits_applied, settled.amount_due) == (Decimal(50), Decimal("160.00"))


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Discount("x"),
        lambda: Discount("x", percent=Decimal(101)),
        lambda: Discount("x", amount=Decimal(-1)),
        lambda: Discount("x", percent=Decimal(5), amount=Decimal(5)),
        lambda: Tax("x", Decimal("-0.1")),
        lambda: settle([Line(Decimal("1.005"))], "USD"),
    ],
)
def test_what_cannot_be_settled_is_refused(bad):
    with pytest.raises(ValueError):
        bad()
