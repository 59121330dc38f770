"""What a credit note credits, to the minor unit (decision 020): pure arithmetic on an invoice's stored lines.

**Shares.** Only the invoice's charges are credited directly: lines of kind base fee, agent fee, usage, minimum
or adjustment with a positive amount. What the invoice added or took after them follows them in proportion, as
Stripe's credit notes carry a line's ``discount_amounts`` and ``tax_amounts``:

* its **discounts** — each line's share as billing.settlement spread them (the stored discount amounts, spread
  again over the lines each coupon covered, in the same order: the same 20-place shares);
* its **tax** — the period's tax line over the taxed lines, in proportion to what they carry after discounts
  (an inclusive rate's tax is contained in the amounts and only reported; a reverse charge has none);
* what was **deducted** after tax — prepaid credit applied and negative lines (late-usage corrections) — in
  proportion to what each line carries after discount and tax, so that a line's *value* (amount − discount +
  added tax − deduction) sums to exactly the invoice's total over all its charges.

**Rounding once, cumulatively.** A note's discount, tax and deduction are each rounded once, half up, as the
difference between the rounded share of everything credited on the invoice after it and what the earlier notes
took: ``round(Σ share × credited / amount) − Σ earlier``. So no note is ever negative, and the notes that credit
a whole invoice add up to exactly its discounts, tax and total, whatever the order or size of the notes. The
total is then ``subtotal − discount + tax (unless included) − deduction``.

**Limits.** Per line, never more than its amount (and, credited by quantity, its billable quantity); a line is
credited by amount or by quantity, never both (Stripe's rule); per invoice, the notes never total more than the
invoice's total.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, localcontext

from billing import settlement
from billing.pricing import PRECISION, currency_exponent, round_money

ZERO = Decimal(0)
# Lines a credit note credits directly: the charges (an adjustment corrects an earlier period's charge).
CREDITABLE_KINDS = frozenset({"base_fee", "agent_fee", "usage", "minimum", "adjustment"})
# The period's own lines: what its coupons discounted and its tax line taxed (billing.period_pricing.terms_lines).
PERIOD_KINDS = frozenset({"base_fee", "agent_fee", "usage", "minimum"})
QUANTITY_PLACES = 6  # InvoiceLine/CreditNoteLine quantities (billing.models.QUANTITY)


class CreditNoteError(ValueError):
    """A credit note that cannot be issued as asked; nothing was written. ``field`` names what to change
    (``outcome``, ``reason``, ``memo``, ``lines``, ``amount``, ``quantity``, ``invoice``), ``line_id`` the
    invoice line when it is about one."""

    def __init__(self, field: str, message: str, line_id: int | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.line_id = field, message, line_id


@dataclass(frozen=True)
class Billed:
    """An invoice line as the arithmetic reads it: ``group`` is (kind, meter, provider, model), what a coupon's
    coverage looks at; ``code`` a discount line's coupon."""

    id: int
    kind: str
    amount: Decimal
    description: str = ""
    group: tuple = ()
    code: str = ""
    billable_quantity: Decimal = ZERO


@dataclass(frozen=True)
class Share:
    """What a creditable line carries, exactly (not rounded): ``value`` is what crediting all of it gives."""

    line: Billed
    discount: Decimal
    tax: Decimal
    deduction: Decimal
    tax_included: bool

    @property
    def value(self) -> Decimal:
        return self.line.amount - self.discount + (ZERO if self.tax_included else self.tax) - self.deduction


@dataclass(frozen=True)
class Allocation:
    currency: str
    total: Decimal  # the invoice's
    shares: dict[int, Share]  # the creditable lines, by id, in the invoice's order
    tax_included: bool


def allocate(
    lines: Sequence[Billed],
    total: Decimal,
    currency: str,
    *,
    tax: Decimal = ZERO,
    tax_included: bool = False,
    coverage: Mapping[str, Callable[[tuple], bool] | None] | None = None,
) -> Allocation:
    """Each creditable line's share of the invoice's discounts, tax and deductions. ``lines`` in the invoice's
    order; ``tax`` the period's tax (added, or contained when ``tax_included``); ``coverage`` a discount line's
    coupon code → which lines it covers (missing: every line, as a coupon without limits)."""
    coverage = coverage or {}
    with localcontext(prec=PRECISION):
        period = [line for line in lines if line.kind in PERIOD_KINDS]
        taken = [
            settlement.Discount(line.code, amount=-line.amount, applies_to=coverage.get(line.code))
            for line in lines
            if line.kind == "discount" and line.amount < 0
        ]
        after = settlement.discounted(
            [settlement.Line(line.amount, line.group) for line in period], currency, taken
        )
        discount = {line.id: line.amount - left for line, left in zip(period, after, strict=True)}
        creditable = [line for line in lines if line.kind in CREDITABLE_KINDS and line.amount > 0]
        taxed = {line.id: line.amount - discount[line.id] for line in creditable if line.id in discount}
        base = sum(taxed.values(), ZERO)
        taxes = {i: tax * net / base if base > 0 else ZERO for i, net in taxed.items()}
        charged = {
            line.id: line.amount
            - discount.get(line.id, ZERO)
            + (ZERO if tax_included else taxes.get(line.id, ZERO))
            for line in creditable
        }
        billed = sum(charged.values(), ZERO)
        deducted = max(billed - total, ZERO)
        shares = {
            line.id: Share(
                line,
                discount.get(line.id, ZERO),
                taxes.get(line.id, ZERO),
                deducted * charged[line.id] / billed if billed > 0 else ZERO,
                tax_included,
            )
            for line in creditable
        }
    return Allocation(currency, total, shares, tax_included)


@dataclass(frozen=True)
class Credited:
    """What the invoice's earlier credit notes took: per line, the amount and (lines credited by quantity) the
    quantity; per note, summed, the rounded discount, tax, deduction and total."""

    amounts: dict[int, Decimal] = field(default_factory=dict)
    quantities: dict[int, Decimal] = field(default_factory=dict)  # lines credited by quantity only
    discount: Decimal = ZERO
    tax: Decimal = ZERO
    deduction: Decimal = ZERO
    total: Decimal = ZERO

    def left(self, share: Share) -> Decimal:
        return share.line.amount - self.amounts.get(share.line.id, ZERO)


@dataclass(frozen=True)
class Request:
    """Credit an invoice line by ``amount`` (in the line's own terms) or by ``quantity`` (of its billable
    quantity), exactly one of them."""

    invoice_line_id: int
    amount: Decimal | None = None
    quantity: Decimal | None = None


@dataclass(frozen=True)
class LineFigures:
    share: Share
    amount: Decimal
    quantity: Decimal | None
    tax: Decimal
    total: Decimal


@dataclass(frozen=True)
class NoteFigures:
    lines: tuple[LineFigures, ...]
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    tax_included: bool
    deduction: Decimal
    total: Decimal


def full(allocation: Allocation, credited: Credited) -> list[Request]:
    """What is left of every line: a full credit note (by quantity for lines credited by quantity before)."""
    requests = []
    for line_id, share in allocation.shares.items():
        if credited.left(share) <= 0:
            continue
        if line_id in credited.quantities:
            quantity = share.line.billable_quantity - credited.quantities[line_id]
            requests.append(Request(line_id, quantity=quantity))
        else:
            requests.append(Request(line_id, amount=credited.left(share)))
    return requests


def figure(allocation: Allocation, credited: Credited, requests: Sequence[Request]) -> NoteFigures:
    """A credit note's amounts for ``requests`` after the ``credited`` earlier notes, or CreditNoteError naming
    what breaks a rule."""
    currency = allocation.currency
    left_on_invoice = round_money(allocation.total - credited.total, currency)
    if left_on_invoice <= 0:
        raise CreditNoteError("invoice", "nothing is left to credit on this invoice")
    if not requests:
        raise CreditNoteError("lines", "choose at least one line to credit")
    with localcontext(prec=PRECISION):
        wanted: list[tuple[Share, Decimal, Decimal | None]] = []
        for request in requests:
            share = _share(allocation, request.invoice_line_id, {s.line.id for s, _, _ in wanted})
            wanted.append((share, *_amount(share, credited, request, currency)))
        after = dict(credited.amounts)
        for share, amount, _ in wanted:
            after[share.line.id] = after.get(share.line.id, ZERO) + amount

        def cumulative(part: Callable[[Share], Decimal]) -> Decimal:
            return round_money(
                sum(
                    (part(s) * after.get(i, ZERO) / s.line.amount for i, s in allocation.shares.items()), ZERO
                ),
                currency,
            )

        discount = cumulative(lambda s: s.discount) - credited.discount
        tax = cumulative(lambda s: s.tax) - credited.tax
        deduction = cumulative(lambda s: s.deduction) - credited.deduction
        subtotal = sum((amount for _, amount, _ in wanted), ZERO)
        total = subtotal - discount + (ZERO if allocation.tax_included else tax) - deduction
        if total <= 0:
            raise CreditNoteError(
                "lines",
                f"these amounts credit nothing once the invoice's discounts and "
                f"deductions are taken off ({total} {currency})",
            )
        if total > left_on_invoice:
            raise CreditNoteError(
                "lines",
                f"this note would credit {total} {currency}, more than the {left_on_invoice} {currency} left to "
                "credit on the invoice (credit the rest with a full credit note)",
            )
        weights = [s.value * amount / s.line.amount for s, amount, _ in wanted]
        amounts = [amount for _, amount, _ in wanted]
        totals = apportion(total, weights, amounts, currency)
        taxes = apportion(tax, [s.tax * amount / s.line.amount for s, amount, _ in wanted], amounts, currency)
    lines = tuple(
        LineFigures(share, amount, quantity, line_tax, line_total)
        for (share, amount, quantity), line_tax, line_total in zip(wanted, taxes, totals, strict=True)
    )
    return NoteFigures(lines, subtotal, discount, tax, allocation.tax_included, deduction, total)


def _share(allocation: Allocation, line_id: int, seen: set[int]) -> Share:
    share = allocation.shares.get(line_id)
    if share is None:
        raise CreditNoteError(
            "lines", "not a line of this invoice that can be credited (only its positive charges)", line_id
        )
    if line_id in seen:
        raise CreditNoteError("lines", "this line is named twice", line_id)
    return share


def _amount(
    share: Share, credited: Credited, request: Request, currency: str
) -> tuple[Decimal, Decimal | None]:
    """The amount (in the line's terms) a request credits, and its quantity when it is by quantity."""
    line_id, left = share.line.id, credited.left(share)
    if (request.amount is None) == (request.quantity is None):
        raise CreditNoteError("lines", "give an amount or a quantity, one of them", line_id)
    if left <= 0:
        field = "amount" if request.quantity is None else "quantity"
        raise CreditNoteError(field, "this line is fully credited already", line_id)
    if request.quantity is not None:
        if line_id in credited.amounts and line_id not in credited.quantities:
            raise CreditNoteError(
                "quantity", "this line was credited by amount: credit it by amount", line_id
            )
        quantity = _decimal(request.quantity, "quantity", line_id)
        billable = share.line.billable_quantity
        if billable <= 0:
            raise CreditNoteError("quantity", "this line has no quantity: credit it by amount", line_id)
        if quantity.as_tuple().exponent < -QUANTITY_PLACES:
            raise CreditNoteError("quantity", f"at most {QUANTITY_PLACES} decimal places", line_id)
        before = credited.quantities.get(line_id, ZERO)
        if before + quantity > billable:
            raise CreditNoteError(
                "quantity", f"at most {billable - before} is left to credit of its {billable}", line_id
            )
        # by the cumulative quantity, so that crediting all of it, in any steps, credits exactly the amount
        amount = round_money(share.line.amount * (before + quantity) / billable, currency) - round_money(
            share.line.amount * before / billable, currency
        )
        if amount <= 0:
            raise CreditNoteError("quantity", f"too small to credit anything in {currency}", line_id)
        return amount, quantity
    if line_id in credited.quantities:
        raise CreditNoteError("amount", "this line was credited by quantity: credit it by quantity", line_id)
    amount = _decimal(request.amount, "amount", line_id)
    if round_money(amount, currency) != amount:
        raise CreditNoteError("amount", f"has digits below the smallest unit of {currency}", line_id)
    if amount > left:
        raise CreditNoteError("amount", f"at most {left} {currency} is left to credit on this line", line_id)
    return amount, None


def _decimal(value, name: str, line_id: int) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        raise CreditNoteError(name, "must be a decimal number", line_id) from None
    if not number.is_finite() or number <= 0:
        raise CreditNoteError(name, "must be a positive number", line_id)
    return number


def apportion(
    amount: Decimal, weights: Sequence[Decimal], fallback: Sequence[Decimal], currency: str
) -> list[Decimal]:
    """``amount`` (≥ 0, in whole minor units) shared out in proportion to ``weights`` — or to ``fallback`` (all
    positive) when the weights are all zero — by largest remainders: each part ≥ 0, in minor units, summing to
    exactly ``amount``."""
    unit = Decimal(1).scaleb(-currency_exponent(currency))
    units = int(amount / unit)
    if sum(weights, ZERO) <= 0:
        weights = fallback
    whole = sum(weights, ZERO)
    exact = [units * weight / whole for weight in weights]
    parts = [int(e.to_integral_value(rounding=ROUND_FLOOR)) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (parts[i] - exact[i], i))
    for i in by_remainder[: units - sum(parts)]:
        parts[i] += 1
    return [Decimal(part) * unit for part in parts]
