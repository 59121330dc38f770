"""What Stripe Tax is asked to tax (billing.tax_calculation.taxable_lines): the invoice's sales with discounts and
negative lines spread over the positive ones, in whole minor units adding up to exactly what the sales come to.
Checked against integer arithmetic written here."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.models import InvoiceLine
from billing.tax_calculation import taxable_lines

Kind = InvoiceLine.Kind
SALES = [Kind.USAGE, Kind.BASE_FEE, Kind.DISCOUNT, Kind.ADJUSTMENT]


def lines_of(minor_amounts: list[tuple[str, int]], exponent: int) -> list[InvoiceLine]:
    return [
        InvoiceLine(kind=kind, amount=Decimal(amount).scaleb(-exponent), position=n)
        for n, (kind, amount) in enumerate(minor_amounts, start=1)
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(SALES), st.integers(-50_000, 500_000)), min_size=1, max_size=12),
    st.sampled_from([("USD", 2), ("JPY", 0), ("KWD", 3)]),
)
def test_shares_add_up_to_the_sales_and_stay_within_a_unit_of_their_proportion(amounts, money):
    currency, exponent = money
    others = [(Kind.TAX, 777), (Kind.CREDITS_APPLIED, -1000)]  # never taxed
    shared = taxable_lines(lines_of(amounts + others, exponent), currency)

    assert [line.kind for line, _ in shared] == [kind for kind, _ in amounts]
    minor = [int(share.scaleb(exponent)) for _, share in shared]
    assert all(Decimal(m).scaleb(-exponent) == share for m, (_, share) in zip(minor, shared, strict=True))
    net = max(sum(a for _, a in amounts), 0)
    positive = sum(a for _, a in amounts if a > 0)
    assert sum(minor) == (net if positive else 0)
    for (_, amount), share in zip(amounts, minor, strict=True):
        if amount <= 0:
            assert share == 0
        else:
            assert abs(Fraction(share) - Fraction(net * amount, positive)) < 1
            assert 0 <= share <= amount


def test_a_coupon_is_spread_in_proportion_and_the_leftover_cents_go_to_the_largest_remainders():
    lines = lines_of([(Kind.BASE_FEE, 4900), (Kind.USAGE, 389), (Kind.USAGE, 1234), (Kind.DISCOUNT, -978)], 2)
    shares = [share for _, share in taxable_lines(lines, "USD")]
    # 5545 × 4900 / 6523 = 4165.41, × 389 = 330.68, × 1234 = 1048.99: floors 4165 + 330 + 1048 = 5543, so the two
    # cents left go to the remainders .99 and .68
    assert shares == [Decimal("41.65"), Decimal("3.31"), Decimal("10.49"), Decimal(0)]
