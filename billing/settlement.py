"""The order of operations from an invoice's priced lines to the amount due (DESIGN §14, issue 16 part 5,
decision 019), in one pure function:

    usage lines (allowances already applied) → discounts → tax → prepaid credits applied → amount due

Rules, each applied once:

* **Lines** come in rounded to the currency's minor unit (each line is rounded once, by billing.pricing).
* **Discounts** apply in the order given, each to what its eligible lines still carry after the discounts before
  it: a percentage is rounded once, half up, per discount; a fixed amount takes at most what is left. A discount
  never takes an eligible amount below zero, and only positive lines are discounted (an earlier period's negative
  adjustment is a correction, not a sale).
* **Tax** is computed on the discounted amount, once per rate over all the lines it covers (not per line), and
  rounded half up to the minor unit: exclusive rates add ``base × rate``; inclusive rates are already in the
  price, so the tax shown is ``base − base ÷ (1 + rate)`` and nothing is added; a reverse-charged invoice carries
  no tax (the buyer accounts for it) and says so.
* **Prepaid credit** pays the taxed total up to what is available, never below zero.

Results depend only on the multiset of lines, never on their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, localcontext

from billing.pricing import PRECISION, currency_exponent, round_money

ZERO = Decimal(0)
PLACES = Decimal(1).scaleb(-20)


@dataclass(frozen=True)
class Line:
    """A priced invoice line: ``group`` says what it is (for discounts limited to some meters or models)."""

    amount: Decimal
    group: tuple = ()


@dataclass(frozen=True)
class Discount:
    """A coupon's effect on one invoice: ``percent`` (0–100) or ``amount`` (fixed, in the invoice's currency);
    ``applies_to`` a predicate on a line's group (None: every line)."""

    name: str
    percent: Decimal | None = None
    amount: Decimal | None = None
    applies_to: object = None  # Callable[[tuple], bool] | None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.amount is None):
            raise ValueError("a discount is a percentage or a fixed amount")
        if self.percent is not None and not ZERO <= self.percent <= 100:
            raise ValueError("a percentage discount is between 0 and 100")
        if self.amount is not None and self.amount < 0:
            raise ValueError("a fixed discount is not negative")

    def covers(self, group: tuple) -> bool:
        return self.applies_to is None or bool(self.applies_to(group))


@dataclass(frozen=True)
class Tax:
    """A tax rate on the invoice: ``rate`` as a fraction (0.2 for 20 %), exclusive (added) or inclusive
    (already in the prices); ``reverse_charge``: none charged, the buyer accounts for it."""

    name: str
    rate: Decimal
    inclusive: bool = False
    reverse_charge: bool = False

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError("a tax rate is not negative")


@dataclass(frozen=True)
class DiscountLine:
    name: str
    amount: Decimal  # ≤ 0


@dataclass(frozen=True)
class TaxLine:
    name: str
    rate: Decimal
    base: Decimal  # the discounted amount it is computed on
    amount: Decimal  # the tax: added when exclusive, contained when inclusive, 0 when reverse-charged
    inclusive: bool
    reverse_charge: bool


@dataclass(frozen=True)
class Settlement:
    subtotal: Decimal  # Σ lines
    discounts: tuple[DiscountLine, ...] = field(default_factory=tuple)
    taxes: tuple[TaxLine, ...] = field(default_factory=tuple)
    credits_applied: Decimal = ZERO  # ≥ 0
    currency: str = "USD"

    @property
    def discounted(self) -> Decimal:
        return self.subtotal + sum((d.amount for d in self.discounts), ZERO)

    @property
    def tax_added(self) -> Decimal:
        return sum((t.amount for t in self.taxes if not t.inclusive and not t.reverse_charge), ZERO)

    @property
    def total(self) -> Decimal:
        """What was invoiced: discounted, with exclusive tax added."""
        return self.discounted + self.tax_added

    @property
    def amount_due(self) -> Decimal:
        return self.total - self.credits_applied


def settle(
    lines: Iterable[Line],
    currency: str,
    *,
    discounts: Sequence[Discount] = (),
    tax: Tax | None = None,
    credit_available: Decimal = ZERO,
) -> Settlement:
    with localcontext(prec=PRECISION):  # 60 digits: the shares below keep 20 places of any amount
        return _settle(list(lines), currency, discounts, tax, credit_available)


def _settle(
    lines: list[Line],
    currency: str,
    discounts: Sequence[Discount],
    tax: Tax | None,
    credit_available: Decimal,
) -> Settlement:
    subtotal = sum((line.amount for line in lines), ZERO)
    discount_lines, _ = _discount(lines, currency, discounts)
    discounted = subtotal - sum((-d.amount for d in discount_lines), ZERO)
    taxes: tuple[TaxLine, ...] = ()
    if tax is not None:
        base = max(discounted, ZERO)
        if tax.reverse_charge:
            amount = ZERO
        elif tax.inclusive:
            amount = round_money(base - base / (1 + tax.rate), currency)
        else:
            amount = round_money(base * tax.rate, currency)
        taxes = (TaxLine(tax.name, tax.rate, base, amount, tax.inclusive, tax.reverse_charge),)
    settlement = Settlement(subtotal, tuple(discount_lines), taxes, ZERO, currency)
    applied = min(max(credit_available, ZERO), max(settlement.total, ZERO))
    return Settlement(subtotal, tuple(discount_lines), taxes, applied, currency)


def _discount(
    lines: list[Line], currency: str, discounts: Sequence[Discount]
) -> tuple[list[DiscountLine], dict[int, Decimal]]:
    """What each discount takes, in order, and what each positive line (by index) carries after all of them."""
    for line in lines:
        if round_money(line.amount, currency) != line.amount:
            raise ValueError(f"line amount {line.amount} is not rounded to the minor unit of {currency}")
    # What each discount can still take: the positive lines it covers, less what earlier discounts took.
    left = {index: line.amount for index, line in enumerate(lines) if line.amount > 0}
    discount_lines = []
    for discount in discounts:
        covered = [i for i in left if discount.covers(lines[i].group)]
        eligible = sum((left[i] for i in covered), ZERO)
        # at most what the lines carry, in whole minor units (after an earlier partial discount they may carry
        # a fraction of one)
        cap = eligible.quantize(Decimal(1).scaleb(-currency_exponent(currency)), rounding=ROUND_DOWN)
        if discount.percent is not None:
            take = round_money(eligible * discount.percent / 100, currency)
        else:
            take = round_money(discount.amount, currency)
        take = max(min(take, cap), ZERO)
        discount_lines.append(DiscountLine(discount.name, -take))
        _spread(take, covered, left, eligible)
    return discount_lines, left


def discounted(lines: Iterable[Line], currency: str, discounts: Sequence[Discount]) -> list[Decimal]:
    """What each line carries after the discounts, in the lines' order, exactly as :func:`settle` spreads them
    (20 places): a credit note gives back a line's share of its invoice's discounts (billing.credit_notes).
    Lines that are not positive are never discounted and carry their own amount."""
    lines = list(lines)
    with localcontext(prec=PRECISION):
        _, left = _discount(lines, currency, discounts)
    return [left.get(index, line.amount) for index, line in enumerate(lines)]


def _spread(take: Decimal, covered: list[int], left: dict[int, Decimal], eligible: Decimal) -> None:
    """Lower what the covered lines still carry by ``take`` in total, in proportion (exact decimals), so a
    later discount limited to some of them sees what this one left."""
    if eligible <= 0 or take <= 0:
        return
    for i in covered:  # each line's share on its own, kept to 20 places: sums stay exact and order-free
        left[i] = (left[i] - left[i] * take / eligible).quantize(PLACES)
