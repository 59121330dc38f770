"""Credit notes (billing.credit_notes, decision 020): full or per line, by amount or quantity; their share of
the invoice's discounts, tax and prepaid credit; each outcome; gapless CN numbers; never more than was billed,
under concurrency too; immutable once issued; bad input refused with the field named and nothing changed.

Amounts are worked out here in integers of minor units, independently of the code under test."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, InternalError, connection, transaction
from django.db.models import Sum
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from billing import credit_notes, credits, invoicing
from billing.credit_notes import CreditNoteError, Request
from billing.models import (
    AppliedCoupon,
    Coupon,
    CreditGrant,
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceNumberSequence,
    TaxRate,
)
from notifications.models import Event
from tests.billing.builders import at, billed, finalize, store
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db
MARCH = date(2026, 3, 1)
ISSUED = datetime(2026, 4, 10, 9, tzinfo=UTC)


def half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator), half away from zero, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def minor(amount: Decimal, places: int = 2) -> int:
    scaled = amount.scaleb(places)
    assert scaled == scaled.to_integral_value(), f"{amount} has digits below the minor unit"
    return int(scaled)


def line(invoice: Invoice, kind: str, meter: str = ""):
    return invoice.lines.get(kind=kind, **({"meter": meter} if meter else {}))


def issue(invoice: Invoice, outcome="reduce_due", reason="order_change", lines=None, **options) -> CreditNote:
    return credit_notes.issue(invoice.pk, outcome=outcome, reason=reason, lines=lines, now=ISSUED, **options)


def state() -> tuple:
    """Everything a refused credit note must leave as it was."""
    return (
        CreditNote.objects.count(),
        CreditNoteLine.objects.count(),
        list(
            InvoiceNumberSequence.objects.order_by("series", "year").values_list(
                "series", "year", "last_number"
            )
        ),
        list(Invoice.objects.order_by("pk").values_list("status", "total")),
        CreditGrant.objects.count(),
        Event.objects.count(),
    )


def test_a_full_credit_note_credits_every_line_and_settles_what_was_due():
    invoice = finalize(billed())
    assert invoice.total == Decimal("51.22") and invoice.status == "open"
    staff = UserFactory(is_staff=True)

    note = issue(invoice, reason="duplicate", by=staff)

    assert note.number == "CN-2026-000001" and note.issued_by == staff and note.issued_at == ISSUED
    assert (note.subtotal, note.discount_amount, note.tax_amount, note.deduction_amount, note.total) == (
        Decimal("51.22"),
        0,
        0,
        0,
        Decimal("51.22"),
    )
    assert sorted((ln.invoice_line_id, ln.amount, ln.total) for ln in note.lines.all()) == sorted(
        (ln.pk, ln.amount, ln.amount) for ln in invoice.lines.all() if ln.amount > 0
    )
    invoice.refresh_from_db()
    assert invoice.status == "paid" and credit_notes.amount_due(invoice) == 0  # nothing left to pay
    assert credit_notes.left_to_credit(invoice) == 0
    events = list(Event.objects.filter(type__in=["credit_note.created", "invoice.paid"]).order_by("pk"))
    assert [e.type for e in events] == ["invoice.paid", "credit_note.created"]
    data = events[1].data
    assert (data["number"], data["total"], data["outcome"], data["invoice_amount_due"]) == (
        "CN-2026-000001",
        "51.22",
        "reduce_due",
        "0.00",
    )
    assert {x["amount"] for x in data["lines"]} == {"49.00", "2.10", "0.12"}
    with pytest.raises(CreditNoteError, match="nothing is left to credit"):
        issue(invoice, outcome="refund")


def test_a_partial_note_by_amount_lowers_what_is_due_and_leaves_the_invoice_open():
    invoice = finalize(billed())
    fee = line(invoice, "base_fee")

    note = issue(invoice, lines=[Request(fee.pk, amount=Decimal("10.00"))])

    assert (note.subtotal, note.total) == (Decimal("10.00"), Decimal("10.00"))
    (only,) = note.lines.all()
    assert (only.invoice_line_id, only.amount, only.quantity, only.total) == (fee.pk, 10, None, 10)
    invoice.refresh_from_db()
    assert invoice.status == "open" and credit_notes.amount_due(invoice) == Decimal("41.22")
    with pytest.raises(CreditNoteError) as refused:
        issue(invoice, lines=[Request(fee.pk, amount=Decimal("39.01"))])
    assert (refused.value.field, refused.value.line_id) == ("amount", fee.pk)
    assert "39.00 USD is left" in str(refused.value)
    rest = issue(invoice, lines=[Request(fee.pk, amount=Decimal("39.00"))])
    assert rest.number == "CN-2026-000002" and credit_notes.amount_due(invoice) == Decimal("2.22")


def test_credit_by_quantity_in_steps_adds_up_to_exactly_the_line():
    agent = billed(usage=False)
    store(
        agent, at(date(2026, 3, 6)), {"stt_audio_seconds": 7000}, "stt", provider="Deepgram", model="nova-3"
    )
    invoice = finalize(agent)
    stt = line(invoice, "usage", "stt_audio_seconds")
    assert (stt.billable_quantity, stt.amount) == (7000, Decimal("1.40"))  # $0.012 a minute

    steps = [Decimal("1000"), Decimal("2500.5"), Decimal("3499.5")]
    notes = [issue(invoice, lines=[Request(stt.pk, quantity=q)]) for q in steps]

    # each step: round(140 × cumulative quantity / 7000) less what the steps before it took
    cumulative, expected = Decimal(0), []
    for q in steps:
        before, cumulative = cumulative, cumulative + q
        expected.append(half_up(int(140 * cumulative * 10), 70000) - half_up(int(140 * before * 10), 70000))
    assert [minor(n.total) for n in notes] == expected and sum(expected) == 140
    assert [n.lines.get().quantity for n in notes] == steps
    with pytest.raises(CreditNoteError, match="fully credited"):
        issue(invoice, lines=[Request(stt.pk, quantity=Decimal(1))])


def test_a_line_credited_by_quantity_is_not_credited_by_amount_and_the_reverse():
    invoice = finalize(billed())
    stt, llm = line(invoice, "usage", "stt_audio_seconds"), line(invoice, "usage", "llm_input_text_tokens")
    issue(invoice, lines=[Request(stt.pk, quantity=Decimal(100)), Request(llm.pk, amount=Decimal("1.00"))])
    with pytest.raises(CreditNoteError) as by_amount:
        issue(invoice, lines=[Request(stt.pk, amount=Decimal("0.01"))])
    with pytest.raises(CreditNoteError) as by_quantity:
        issue(invoice, lines=[Request(llm.pk, quantity=Decimal(1000))])
    assert (by_amount.value.field, by_quantity.value.field) == ("amount", "quantity")
    full = issue(invoice)  # the rest of every line, each the way it was credited before
    stt_rest = full.lines.get(invoice_line=stt)
    assert stt_rest.quantity == 500 and stt_rest.amount == Decimal("0.10")


@pytest.fixture
def seller(settings):
    settings.SELLER_NAME, settings.SELLER_COUNTRY = "Voicey SAS", "FR"
    settings.SELLER_ADDRESS, settings.SELLER_TAX_ID = "1 rue de la Paix; 75002 Paris", "FR40303265045"


def test_tax_is_credited_in_proportion_to_what_the_lines_carry_and_in_full_exactly(seller):
    TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=date(2024, 1, 1))
    invoice = finalize(billed(tax_country="FR"))
    tax = minor(line(invoice, "tax").amount)
    assert tax == half_up(5122 * 20, 100) == 1024 and invoice.total == Decimal("61.46")
    fee = line(invoice, "base_fee")

    first = issue(invoice, lines=[Request(fee.pk, amount=Decimal("10.00"))])
    second = issue(invoice, lines=[Request(fee.pk, amount=Decimal("0.01"))])
    rest = issue(invoice)

    # the tax of everything credited so far, rounded once, less what earlier notes took
    assert minor(first.tax_amount) == half_up(tax * 1000, 5122) == 200
    assert minor(second.tax_amount) == half_up(tax * 1001, 5122) - 200
    assert minor(first.total) == 1000 + 200 and not first.tax_included
    assert sum(minor(n.tax_amount) for n in (first, second, rest)) == tax
    assert sum(minor(n.total) for n in (first, second, rest)) == minor(invoice.total)
    assert rest.lines.get(invoice_line=fee).amount == Decimal("38.99")


def test_discounts_follow_the_lines_they_discounted(seller):
    TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=date(2024, 1, 1))
    agent = billed(tax_country="FR")
    coupon = Coupon.objects.create(
        code="llm-half", name="Half off LLM", percent_off=Decimal(50), meters=["llm_input_text_tokens"]
    )
    AppliedCoupon.objects.create(tenant=agent.tenant, coupon=coupon, starts_on=MARCH)
    invoice = finalize(agent)
    discount = -minor(line(invoice, "discount").amount)
    assert discount == 105  # half of the $2.10 LLM line, none of the fee or the STT line
    tax = minor(line(invoice, "tax").amount)
    assert tax == half_up((5122 - 105) * 20, 100)
    fee, llm = line(invoice, "base_fee"), line(invoice, "usage", "llm_input_text_tokens")

    on_fee = issue(invoice, lines=[Request(fee.pk, amount=Decimal("49.00"))])
    on_llm = issue(invoice, lines=[Request(llm.pk, amount=Decimal("1.00"))])

    assert on_fee.discount_amount == 0  # the coupon did not cover the fee
    taxed = 5122 - 105
    assert minor(on_fee.tax_amount) == half_up(tax * 4900, taxed)
    # the LLM line carries its whole discount: $1.00 of its $2.10 takes 100/210 of the $1.05
    assert minor(on_llm.discount_amount) == half_up(105 * 100, 210)
    llm_tax = half_up(tax * (4900 + (210 - 105) * 100 // 210), taxed)  # cumulative: fee, then 100/210 of LLM
    assert minor(on_llm.tax_amount) == llm_tax - minor(on_fee.tax_amount)
    rest = issue(invoice)
    notes = (on_fee, on_llm, rest)
    assert sum(minor(n.discount_amount) for n in notes) == discount
    assert sum(minor(n.tax_amount) for n in notes) == tax
    assert sum(minor(n.total) for n in notes) == minor(invoice.total)


def test_prepaid_credit_that_paid_part_of_the_invoice_is_deducted_in_proportion():
    agent = billed()
    credits.grant(agent.tenant, "20.00", source="promotional", reason="welcome", effective_at=at(MARCH))
    invoice = finalize(agent)
    assert invoice.total == Decimal("31.22")  # $51.22 less $20.00 of prepaid credit
    fee = line(invoice, "base_fee")

    note = issue(invoice, lines=[Request(fee.pk, amount=Decimal("10.00"))])

    assert minor(note.deduction_amount) == half_up(2000 * 1000, 5122) == 390
    assert note.total == Decimal("6.10")
    rest = issue(invoice)
    assert rest.total + note.total == invoice.total
    assert rest.deduction_amount + note.deduction_amount == Decimal("20.00")


def test_an_inclusive_rate_reports_the_tax_the_credit_contains_and_adds_none(seller):
    TaxRate.objects.create(
        name="GST", country="AU", percent=Decimal(10), inclusive=True, effective_from=date(2024, 1, 1)
    )
    invoice = finalize(billed(tax_country="AU"))
    contained = minor(Decimal(line(invoice, "tax").price_snapshot["tax"]))
    fee = line(invoice, "base_fee")
    note = issue(invoice, lines=[Request(fee.pk, amount=Decimal("11.00"))])
    assert note.tax_included and note.total == Decimal("11.00")
    assert minor(note.tax_amount) == half_up(contained * 1100, 5122)


@pytest.mark.parametrize(
    ("currency", "places", "fee", "credited", "rate"),
    [("JPY", 0, "4900", "1234", 10), ("KWD", 3, "49.000", "10.005", 5)],
)
def test_zero_and_three_decimal_currencies_credit_in_their_minor_units(
    seller, currency, places, fee, credited, rate
):
    TaxRate.objects.create(name="T", country="JP", percent=Decimal(rate), effective_from=date(2024, 1, 1))
    invoice = finalize(billed(currency=currency, base_fee=fee, usage=False, tax_country="JP"))
    fee_minor, tax = minor(Decimal(fee), places), minor(line(invoice, "tax").amount, places)
    assert tax == half_up(fee_minor * rate, 100)
    base = line(invoice, "base_fee")

    note = issue(invoice, lines=[Request(base.pk, amount=Decimal(credited))])

    assert minor(note.tax_amount, places) == half_up(tax * minor(Decimal(credited), places), fee_minor)
    assert minor(note.total, places) == minor(Decimal(credited), places) + minor(note.tax_amount, places)
    with pytest.raises(CreditNoteError, match=f"below the smallest unit of {currency}"):
        issue(invoice, lines=[Request(base.pk, amount=Decimal(credited) + Decimal(1).scaleb(-places - 1))])


def test_refund_and_credit_balance_need_a_paid_invoice_and_credit_the_ledger_once():
    invoice = finalize(billed())
    with pytest.raises(CreditNoteError) as refused:
        issue(invoice, outcome="credit_balance")
    assert refused.value.field == "outcome" and "reduce what is due" in refused.value.message
    Invoice.objects.filter(pk=invoice.pk).update(status="paid")
    with pytest.raises(CreditNoteError, match="it is paid"):
        issue(invoice, outcome="reduce_due")
    fee = line(invoice, "base_fee")

    refund = issue(invoice, outcome="refund", lines=[Request(fee.pk, amount=Decimal("5.00"))])
    credit = issue(invoice, outcome="credit_balance", lines=[Request(fee.pk, amount=Decimal("7.50"))])

    assert not CreditGrant.objects.filter(credit_note=refund).exists()
    grant = CreditGrant.objects.get(credit_note=credit)
    assert (grant.source, grant.amount, grant.tenant_id) == ("refund", Decimal("7.50"), invoice.tenant_id)
    assert credit.number in grant.reason
    assert credits.ledger_balance(invoice.tenant) == Decimal("7.50")
    assert Event.objects.filter(type="credit.granted", data__grant_id=grant.pk).count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():  # the database allows one grant per note
        credits.grant(invoice.tenant, "1.00", source="refund", reason="again", credit_note=credit)
    invoice.refresh_from_db()
    assert invoice.status == "paid" and credit_notes.left_to_credit(invoice) == Decimal("38.72")


def test_gapless_numbers_in_their_own_series_across_a_year_boundary():
    invoice = finalize(billed())
    fee = line(invoice, "base_fee")

    def note_at(when: datetime, amount="1.00") -> str:
        return credit_notes.issue(
            invoice.pk,
            outcome="reduce_due",
            reason="order_change",
            lines=[Request(fee.pk, amount=Decimal(amount))],
            now=when,
        ).number

    first = note_at(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    with pytest.raises(CreditNoteError):  # refused: takes no number
        note_at(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), amount="999.00")
    second = note_at(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    third = note_at(datetime(2027, 1, 1, 0, 0, tzinfo=UTC))
    assert [first, second, third] == ["CN-2026-000001", "CN-2026-000002", "CN-2027-000001"]
    assert invoice.number.startswith("ML-")  # invoices keep their own series
    later = finalize(AgentFactory(tenant=invoice.tenant), period=date(2026, 4, 1))  # the same tenant
    assert later.number == f"ML-{later.finalized_at.year}-000002"


def test_bad_input_names_the_field_and_changes_nothing():
    invoice = finalize(billed())
    other = finalize(billed())
    draft = invoicing.generate_invoice(invoice.tenant_id, date(2026, 4, 1))
    fee = line(invoice, "base_fee")
    tax_free_total = line(invoice, "usage", "llm_input_text_tokens")
    before = state()
    cases = [
        ({"outcome": "cash"}, "outcome", None),
        ({"reason": "because"}, "reason", None),
        ({"reason": "other"}, "memo", None),
        ({"reason": "other", "memo": "x" * 501}, "memo", None),
        ({"lines": []}, "lines", None),
        (
            {"lines": [Request(line(other, "base_fee").pk, amount=Decimal(1))]},
            "lines",
            line(other, "base_fee").pk,
        ),
        (
            {"lines": [Request(fee.pk, amount=Decimal(1)), Request(fee.pk, amount=Decimal(1))]},
            "lines",
            fee.pk,
        ),
        ({"lines": [Request(fee.pk, amount=Decimal(1), quantity=Decimal(1))]}, "lines", fee.pk),
        ({"lines": [Request(fee.pk)]}, "lines", fee.pk),
        ({"lines": [Request(fee.pk, amount=Decimal("-1"))]}, "amount", fee.pk),
        ({"lines": [Request(fee.pk, amount="ten")]}, "amount", fee.pk),
        ({"lines": [Request(fee.pk, amount=Decimal("NaN"))]}, "amount", fee.pk),
        ({"lines": [Request(fee.pk, amount=Decimal("1.001"))]}, "amount", fee.pk),
        ({"lines": [Request(fee.pk, amount=Decimal("49.01"))]}, "amount", fee.pk),
        ({"lines": [Request(fee.pk, quantity=Decimal(2))]}, "quantity", fee.pk),  # a fee's quantity is 1
        (
            {"lines": [Request(tax_free_total.pk, quantity=Decimal("0.0000001"))]},
            "quantity",
            tax_free_total.pk,
        ),
        (
            {"lines": [Request(tax_free_total.pk, quantity=Decimal(1))]},
            "quantity",
            tax_free_total.pk,
        ),  # < $0.01
        ({"outcome": "refund"}, "outcome", None),
    ]
    for options, field, line_id in cases:
        with pytest.raises(CreditNoteError) as refused:
            issue(invoice, **options)
        assert (refused.value.field, refused.value.line_id) == (field, line_id), (options, refused.value)
        assert state() == before, options
    for target, field in ((draft, "invoice"), (Invoice(pk=0), "invoice")):
        with pytest.raises(CreditNoteError) as refused:
            issue(target)
        assert refused.value.field == field
    invoicing.void_invoice(other.pk)
    with pytest.raises(CreditNoteError, match="void"):
        issue(other)


def test_a_note_that_credits_nothing_once_deductions_are_taken_is_refused():
    agent = billed()
    credits.grant(agent.tenant, "51.21", source="promotional", reason="almost all", effective_at=at(MARCH))
    invoice = finalize(agent)
    assert invoice.total == Decimal("0.01")
    with pytest.raises(CreditNoteError, match="credit nothing"):
        issue(invoice, lines=[Request(line(invoice, "base_fee").pk, amount=Decimal("1.00"))])
    assert issue(invoice).total == Decimal("0.01")


def twice_at_once(issue_one) -> list[str]:
    """Run ``issue_one`` in two threads (two database connections) released together; what each returned, or
    the field its CreditNoteError named."""
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def run():
        barrier.wait()
        try:
            outcomes.append(issue_one().number)
        except CreditNoteError as error:
            outcomes.append(error.field)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_notes_for_the_rest_of_a_line_one_succeeds():
    invoice = finalize(billed())
    fee = line(invoice, "base_fee")

    outcomes = twice_at_once(lambda: issue(invoice, lines=[Request(fee.pk, amount=Decimal("49.00"))]))

    assert outcomes == ["CN-2026-000001", "amount"]
    assert CreditNoteLine.objects.get(invoice_line=fee).amount == Decimal("49.00")


def test_an_issued_note_and_its_lines_never_change():
    invoice = finalize(billed())
    note = issue(invoice, lines=[Request(line(invoice, "base_fee").pk, amount=Decimal("5.00"))])
    for attempt in (
        lambda: CreditNote.objects.filter(pk=note.pk).update(total=Decimal("6.00"), subtotal=Decimal("6.00")),
        lambda: CreditNote.objects.filter(pk=note.pk).update(memo="changed"),
        lambda: CreditNote.objects.filter(pk=note.pk).update(outcome="refund"),
        lambda: CreditNote.objects.filter(pk=note.pk).delete(),
        lambda: CreditNoteLine.objects.filter(credit_note=note).update(description="changed"),
        lambda: CreditNoteLine.objects.filter(credit_note=note).delete(),
    ):
        with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
            attempt()
    # its Stripe sync state may follow Stripe
    CreditNote.objects.filter(pk=note.pk).update(sync_state="synced", stripe_credit_note_id="cn_1")
    # a line added to it later makes it disagree with its lines: refused at commit
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditNoteLine.objects.create(
            tenant_id=note.tenant_id,
            credit_note=note,
            invoice_line=line(invoice, "usage", "llm_input_text_tokens"),
            position=2,
            description="sneaked in",
            amount=Decimal("1.00"),
            total=Decimal("1.00"),
        )
        connection.cursor().execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_the_database_refuses_over_crediting_and_lines_of_another_invoice_whatever_the_code():
    invoice, other = finalize(billed()), finalize(billed())
    fee = line(invoice, "base_fee")

    def note(total="1.00", **fields):
        made = {
            "tenant_id": invoice.tenant_id,
            "invoice": invoice,
            "number": f"CN-TEST-{CreditNote.objects.count()}",
            "reason": "duplicate",
            "outcome": "reduce_due",
            "currency": "USD",
            "subtotal": Decimal(total),
            "discount_amount": 0,
            "tax_amount": 0,
            "deduction_amount": 0,
            "total": Decimal(total),
        }
        return CreditNote.objects.create(**{**made, **fields})

    for attempt in (
        lambda: note(total="51.23"),  # more than the invoice's total
        lambda: note(tenant_id=other.tenant_id),  # another tenant's invoice
        lambda: note(currency="EUR"),
        lambda: CreditNoteLine.objects.create(
            tenant_id=invoice.tenant_id,
            credit_note=note(),
            invoice_line=line(other, "base_fee"),
            position=1,
            description="x",
            amount=1,
            total=1,
        ),
        lambda: CreditNoteLine.objects.create(
            tenant_id=invoice.tenant_id,
            credit_note=note(total="49.01"),
            invoice_line=fee,
            position=1,
            description="x",
            amount=Decimal("49.01"),
            total=Decimal("49.01"),
        ),
        lambda: CreditNoteLine.objects.create(
            tenant_id=invoice.tenant_id,
            credit_note=note(),
            invoice_line=fee,
            position=1,
            description="x",
            amount=1,
            total=1,
            quantity=Decimal(2),  # the fee's billable quantity is 1
        ),
    ):
        with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
            attempt()
    draft = invoicing.generate_invoice(invoice.tenant_id, date(2026, 4, 1))
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditNote.objects.create(
            tenant_id=draft.tenant_id, invoice=draft, number="CN-X", reason="duplicate", outcome="reduce_due",
            currency="USD", subtotal=1, discount_amount=0, tax_amount=0, deduction_amount=0, total=1,
        )  # fmt: skip
    assert not CreditNote.objects.exists()


def test_random_sequences_of_notes_through_the_service_never_credit_more_than_was_billed(seller):
    """The property of tests/billing/test_credit_note_amounts.py through the service and the database, on an
    invoice with a coupon, tax and prepaid credit: what is stored never credits a line or the invoice beyond what
    they billed, in whole cents; each example rolls back."""
    TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=date(2024, 1, 1))
    agent = billed(tax_country="FR")
    AppliedCoupon.objects.create(
        tenant=agent.tenant,
        coupon=Coupon.objects.create(code="ten", name="10 % off", percent_off=Decimal(10)),
        starts_on=MARCH,
    )
    credits.grant(agent.tenant, "15.00", source="promotional", reason="welcome", effective_at=at(MARCH))
    invoice = finalize(agent)
    charges = list(invoice.lines.filter(kind__in=["base_fee", "usage"], amount__gt=0))
    outcomes = ["reduce_due", "refund", "credit_balance"]
    issued: list[str] = []

    @given(
        st.lists(st.tuples(st.integers(0, 2), st.integers(1, 5000), st.booleans()), min_size=1, max_size=6)
    )
    @hyp_settings(max_examples=25, deadline=None)
    def run(asked):
        with transaction.atomic():
            for index, cents, pay_first in asked:
                charge = charges[index % len(charges)]
                if pay_first and Invoice.objects.get(pk=invoice.pk).status == "open":
                    Invoice.objects.filter(pk=invoice.pk).update(status="paid")
                status = Invoice.objects.get(pk=invoice.pk).status
                outcome = "reduce_due" if status == "open" else outcomes[1 + cents % 2]
                try:
                    issue(invoice, outcome=outcome, lines=[Request(charge.pk, amount=Decimal(cents) / 100)])
                    issued.append(outcome)
                except CreditNoteError:
                    continue
            for charge in charges:
                credited = (
                    CreditNoteLine.objects.filter(invoice_line=charge).aggregate(s=Sum("amount"))["s"] or 0
                )
                assert credited <= charge.amount
            notes = CreditNote.objects.filter(invoice=invoice)
            assert sum(n.total for n in notes) <= invoice.total
            for note in notes:
                for value in (
                    note.subtotal,
                    note.discount_amount,
                    note.tax_amount,
                    note.deduction_amount,
                    note.total,
                ):
                    assert value == value.quantize(Decimal("0.01"))
            assert sum(g.amount for g in CreditGrant.objects.filter(credit_note__invoice=invoice)) == sum(
                n.total for n in notes if n.outcome == "credit_balance"
            )
            transaction.set_rollback(True)

    run()
    assert set(issued) == set(outcomes)  # every outcome was exercised


@pytest.mark.django_db(transaction=True)
def test_a_request_made_twice_at_once_with_one_key_issues_one_note():
    invoice = finalize(billed())
    fee = line(invoice, "base_fee")

    numbers = twice_at_once(
        lambda: issue(invoice, lines=[Request(fee.pk, amount=Decimal("5.00"))], request_key="form-1")
    )

    assert numbers == ["CN-2026-000001", "CN-2026-000001"]
    assert CreditNote.objects.count() == 1 and CreditNote.objects.get().request_key == "form-1"
    with pytest.raises(IntegrityError), transaction.atomic():  # the database holds one per invoice and key
        CreditNote.objects.create(
            tenant_id=invoice.tenant_id, invoice=invoice, number="CN-X", reason="duplicate", outcome="reduce_due",
            currency="USD", subtotal=1, discount_amount=0, tax_amount=0, deduction_amount=0, total=1,
            request_key="form-1",
        )  # fmt: skip
