"""What credit notes credit (billing.credit_note_amounts, decision 020), property-tested: over random invoices
(lines, coupons, a tax rate, prepaid credit, late-usage corrections) and random sequences of notes — by amount,
by quantity, full — no line is ever credited more than its amount, the notes never total more than the invoice,
every figure is in whole minor units, and the notes that credit everything add up to exactly the invoice's
total, discounts and tax. Checked in integers of minor units written here."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.credit_note_amounts import (
    Billed,
    Credited,
    CreditNoteError,
    Request,
    allocate,
    apportion,
    figure,
    full,
)
from billing.settlement import Discount, Line, Tax, settle
from tests.billing.test_settlement import EXPONENT, minor

KINDS = ["base_fee", "agent_fee", "usage", "minimum"]
METERS = ["llm_input_text_tokens", "tts_characters", "stt_audio_seconds"]


def money(units: int, currency: str) -> Decimal:
    return Decimal(units).scaleb(-EXPONENT[currency])


@st.composite
def invoices(draw):
    """An invoice as finalization makes it: the period's lines, its coupons' lines and its tax line (from
    billing.settlement), late-usage adjustments, prepaid credit applied last; and its total."""
    currency = draw(st.sampled_from(sorted(EXPONENT)))
    lines: list[Billed] = []
    for n in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(KINDS))
        meter = draw(st.sampled_from(METERS)) if kind == "usage" else ""
        units = draw(st.integers(0, 3_000_000))
        quantity = Decimal(draw(st.integers(0, 10_000_000))) if kind in ("usage", "agent_fee") else Decimal(1)
        lines.append(
            Billed(n + 1, kind, money(units, currency), f"line {n}", (kind, meter, "", ""), "", quantity)
        )
    coupons = []
    for n in range(draw(st.integers(0, 2))):
        meters = draw(st.sets(st.sampled_from(METERS), max_size=2))

        def covers(group, meters=frozenset(meters)):
            return group[0] in KINDS and (not meters or group[1] in meters)

        if draw(st.booleans()):
            discount = Discount(
                f"c{n}", percent=Decimal(draw(st.integers(1, 10_000))) / 100, applies_to=covers
            )
        else:
            discount = Discount(
                f"c{n}", amount=money(draw(st.integers(1, 500_000)), currency), applies_to=covers
            )
        coupons.append((f"c{n}", discount))
    tax = None
    if draw(st.booleans()):
        tax = Tax("VAT", Decimal(draw(st.integers(0, 2_500))) / 10_000, inclusive=draw(st.booleans()))
    settled = settle(
        [Line(line.amount, line.group) for line in lines],
        currency,
        discounts=[d for _, d in coupons],
        tax=tax,
    )
    position = len(lines)
    for (code, _), taken in zip(coupons, settled.discounts, strict=True):
        if taken.amount:
            position += 1
            lines.append(Billed(position, "discount", taken.amount, code, ("discount", "", "", ""), code))
    tax_amount, included = Decimal(0), False
    if settled.taxes:
        (tax_line,) = settled.taxes
        included = tax_line.inclusive
        tax_amount = tax_line.amount
        position += 1
        lines.append(Billed(position, "tax", Decimal(0) if included else tax_amount, "VAT"))
    for units in draw(st.lists(st.integers(-200_000, 400_000), max_size=2)):  # late usage, either way
        position += 1
        lines.append(Billed(position, "adjustment", money(units, currency), "late", ("adjustment",)))
    total = sum((line.amount for line in lines), Decimal(0))
    applied = money(draw(st.integers(0, max(minor(total, currency), 0))), currency) if total > 0 else 0
    if applied:
        position += 1
        lines.append(Billed(position, "credits_applied", -applied, "Prepaid credits applied"))
        total -= applied
    coverage = {code: discount.applies_to for code, discount in coupons}
    return currency, lines, total, tax_amount, included, coverage


@st.composite
def notes(draw, max_notes=6):
    """What staff ask for, note after note: each a list of (line index, by quantity?, fraction of the line),
    or None for a full credit note."""
    return draw(
        st.lists(
            st.one_of(
                st.none(),
                st.lists(
                    st.tuples(st.integers(0, 9), st.booleans(), st.integers(1, 1000)), min_size=1, max_size=4
                ),
            ),
            max_size=max_notes,
        )
    )


def requests_for(allocation, credited, asked, currency) -> list[Request]:
    shares = list(allocation.shares.values())
    requests = []
    for index, by_quantity, per_mille in asked:
        if not shares:
            break
        share = shares[index % len(shares)]
        line = share.line
        if by_quantity and line.billable_quantity > 0:
            quantity = max(line.billable_quantity * per_mille // 1000, Decimal(1))
            requests.append(Request(line.id, quantity=quantity))
        else:
            units = max(minor(line.amount, currency) * per_mille // 1000, 1)
            requests.append(Request(line.id, amount=money(units, currency)))
    return requests


def after(credited: Credited, note, currency) -> Credited:
    """The history with ``note`` added: the model of what the service reads back from the database."""
    amounts, quantities = dict(credited.amounts), dict(credited.quantities)
    for line in note.lines:
        line_id = line.share.line.id
        amounts[line_id] = amounts.get(line_id, Decimal(0)) + line.amount
        if line.quantity is not None:
            quantities[line_id] = quantities.get(line_id, Decimal(0)) + line.quantity
    return Credited(
        amounts,
        quantities,
        credited.discount + note.discount,
        credited.tax + note.tax,
        credited.deduction + note.deduction,
        credited.total + note.total,
    )


@given(invoices(), notes())
@settings(max_examples=400, deadline=None)
def test_credit_notes_never_exceed_what_was_billed_and_credit_all_of_it_exactly(invoice, asked):
    currency, lines, total, tax, included, coverage = invoice
    allocation = allocate(lines, total, currency, tax=tax, tax_included=included, coverage=coverage)
    by_id = {line.id: line for line in lines}
    credited = Credited()
    for request in [*asked, None]:  # whatever was asked, a full note at the end credits the rest
        wanted = (
            full(allocation, credited)
            if request is None
            else requests_for(allocation, credited, request, currency)
        )
        try:
            note = figure(allocation, credited, wanted)
        except CreditNoteError:
            if request is None:  # a full note is refused only when nothing is left
                assert total <= 0 or credited.total == total
            continue
        for value in (note.subtotal, note.discount, note.tax, note.deduction, note.total):
            minor(value, currency)  # whole minor units
        assert note.total > 0 and note.discount >= 0 and note.tax >= 0
        added_tax = 0 if note.tax_included else minor(note.tax, currency)
        assert minor(note.total, currency) == (
            minor(note.subtotal, currency)
            - minor(note.discount, currency)
            + added_tax
            - minor(note.deduction, currency)
        )
        assert sum(minor(x.total, currency) for x in note.lines) == minor(note.total, currency)
        assert sum(minor(x.tax, currency) for x in note.lines) == minor(note.tax, currency)
        assert all(x.total >= 0 and x.tax >= 0 and x.amount > 0 for x in note.lines)
        credited = after(credited, note, currency)
        for line_id, amount in credited.amounts.items():
            assert minor(amount, currency) <= minor(by_id[line_id].amount, currency)
            assert by_id[line_id].kind not in ("discount", "tax", "credits_applied")
        for line_id, quantity in credited.quantities.items():
            assert quantity <= by_id[line_id].billable_quantity
        assert minor(credited.total, currency) <= minor(total, currency)

    # the notes credit the invoice's total exactly in the end (a full note takes what is left) ...
    assert minor(credited.total, currency) == max(minor(total, currency), 0)
    charges = [line for line in lines if line.kind in [*KINDS, "adjustment"] and line.amount > 0]
    if total <= 0 or any(credited.left(allocation.shares[line.id]) for line in charges):
        return  # (every cent is credited and a line's last cents are worth nothing after its deductions)
    # ... and, every charge credited in full, exactly its discounts and tax too
    discounts = -sum(minor(line.amount, currency) for line in lines if line.kind == "discount")
    assert minor(credited.discount, currency) == discounts
    assert minor(credited.tax, currency) == minor(tax, currency)


@given(
    st.integers(0, 10**9),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    st.sampled_from(sorted(EXPONENT)),
)
@settings(max_examples=300)
def test_apportioning_gives_whole_minor_units_that_add_up_and_follow_the_weights(units, weights, currency):
    amount = money(units, currency)
    fallback = [Decimal(1)] * len(weights)
    parts = apportion(amount, [Decimal(w) for w in weights], fallback, currency)
    assert sum(minor(p, currency) for p in parts) == units and all(p >= 0 for p in parts)
    basis = weights if sum(weights) else [1] * len(weights)
    for part, weight in zip(parts, basis, strict=True):
        exact = Decimal(units) * weight / sum(basis)
        assert abs(minor(part, currency) - exact) < 1  # the floor of its exact share, or one more


def test_a_line_with_no_discount_tax_or_deduction_credits_exactly_what_is_asked():
    lines = [Billed(1, "usage", Decimal("10.00"), "x", ("usage", "m", "", ""), "", Decimal(3))]
    allocation = allocate(lines, Decimal("10.00"), "USD")
    steps = [figure(allocation, Credited(), [Request(1, quantity=Decimal(1))])]
    assert steps[0].total == Decimal("3.33")
    history = after(Credited(), steps[0], "USD")
    steps.append(figure(allocation, history, [Request(1, quantity=Decimal(2))]))
    assert steps[1].total == Decimal("6.67")  # 10.00 × 3/3 − 3.33: the quantities add up to the line
    with pytest.raises(CreditNoteError):
        figure(allocation, after(history, steps[1], "USD"), [Request(1, quantity=Decimal(1))])


def test_a_note_whose_rounded_parts_would_credit_more_than_is_left_is_refused_and_a_full_note_is_exact():
    """Found by a search of small invoices: a $0.84 line, 74 % off ($0.62), 30 % tax ($0.07), $0.28 of prepaid
    credit applied: the invoice's total is $0.01. Crediting $0.67 of the line gives −$0.49 of discount, +$0.06
    of tax and −$0.22 of deduction, each rounded once: $0.02, more than the $0.01 that is left."""
    lines = [
        Billed(1, "usage", Decimal("0.84"), "x", ("usage", "m", "", ""), "", Decimal(0)),
        Billed(2, "discount", Decimal("-0.62"), "74 %", ("discount",), "d"),
        Billed(3, "tax", Decimal("0.07"), "VAT 30 %"),
        Billed(4, "credits_applied", Decimal("-0.28"), "Prepaid credits applied"),
    ]
    allocation = allocate(lines, Decimal("0.01"), "USD", tax=Decimal("0.07"), coverage={"d": None})
    with pytest.raises(CreditNoteError, match=r"more than the 0\.01 USD left"):
        figure(allocation, Credited(), [Request(1, amount=Decimal("0.67"))])
    note = figure(allocation, Credited(), full(allocation, Credited()))
    assert (note.subtotal, note.discount, note.tax, note.deduction, note.total) == (
        Decimal("0.84"),
        Decimal("0.62"),
        Decimal("0.07"),
        Decimal("0.28"),
        Decimal("0.01"),
    )
