"""Credit notes to Stripe (payments.credit_notes, decision 020), through the real ``stripe`` SDK over HTTP against
the Stripe double: created once whatever repeats (the task twice, an answer lost at create, webhook replays),
each outcome as Stripe applies it (what is due lowered, a refund, a credit recorded out of band), and Stripe's
figures equal ours in minor units."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
import stripe

from billing import credit_notes, credits
from billing.credit_notes import Request
from billing.models import BillingProfile, CreditNote, Invoice, TaxRate
from billing.pricing import to_minor_units
from payments import credit_notes as stripe_notes
from payments import stripe_sync, tasks
from payments.models import StripeEvent
from tests.billing.builders import make_plan
from tests.payments.stripe_world import (
    Status,
    billed_tenant,
    deliver,
    event_for,
    finalized,
    finalized_while_stripe_was_not_configured,
    synced,
    typical_usage,
)

pytestmark = pytest.mark.django_db
NoteSync = CreditNote.SyncState


def issue(invoice: Invoice, outcome="reduce_due", amount=None, line_kind="base_fee", **options) -> CreditNote:
    lines = None
    if amount is not None:
        lines = [Request(invoice.lines.get(kind=line_kind).pk, amount=Decimal(amount))]
    return credit_notes.issue(invoice.pk, outcome=outcome, reason="order_change", lines=lines, **options)


def copies_of(double, note: CreditNote) -> list[dict]:
    return [n for n in double.credit_notes if n["metadata"].get("meterline_credit_note_id") == str(note.pk)]


def the_copy(double, note: CreditNote) -> dict:
    """Exactly one Stripe credit note for ours, on the invoice's copy, for our total in minor units."""
    (copy,) = copies_of(double, note)
    note.refresh_from_db()
    assert (note.sync_state, note.stripe_credit_note_id, note.sync_error) == (NoteSync.SYNCED, copy["id"], "")
    assert copy["invoice"] == note.invoice.stripe_invoice_id
    assert copy["total"] == to_minor_units(note.total, note.currency)
    assert sum(line["amount"] for line in copy["lines"]["data"]) == copy["total"]
    assert copy["metadata"]["meterline_credit_note_number"] == note.number
    return copy


def paid_by_card(double, invoice: Invoice) -> Invoice:
    double.transition(invoice.stripe_invoice_id, "pay_by_card")  # the customer pays the hosted page
    assert deliver(event_for(double, invoice.stripe_invoice_id, "invoice.paid")).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == Status.PAID
    return invoice


def test_a_note_lowering_what_is_due_reaches_stripe_once_on_commit_and_amounts_agree(
    double, plan, django_capture_on_commit_callbacks, eager_tasks
):
    invoice = synced(double, plan)
    with django_capture_on_commit_callbacks(execute=True):
        note = issue(invoice, amount="10.00")

    copy = the_copy(double, note)
    assert (copy["type"], copy["pre_payment_amount"], copy["refunds"], copy["reason"]) == (
        "pre_payment",
        1000,
        [],
        "order_change",
    )
    stripe_invoice = double.invoice(invoice.stripe_invoice_id)
    assert stripe_invoice["amount_remaining"] == to_minor_units(credit_notes.amount_due(invoice), "USD")
    assert stripe_invoice["pre_payment_credit_notes_amount"] == 1000 and stripe_invoice["status"] == "open"

    assert tasks.sync_credit_note_to_stripe(note.pk) == NoteSync.SYNCED  # again: nothing more
    assert len(double.requests_to("POST", r"/v1/credit_notes")) == 1

    with django_capture_on_commit_callbacks(execute=True):
        rest = issue(invoice)  # everything left: ours is paid, and so is Stripe's copy
    the_copy(double, rest)
    invoice.refresh_from_db()
    assert invoice.status == Status.PAID and double.invoice(invoice.stripe_invoice_id)["status"] == "paid"
    response = deliver(event_for(double, invoice.stripe_invoice_id, "invoice.paid"))
    assert response.status_code == 200 and response.json()["outcome"].startswith("kept paid")


def test_an_answer_lost_at_create_never_makes_a_second_stripe_note(double, plan):
    invoice = synced(double, plan)
    note = issue(invoice, amount="5.00")
    double.inject(
        r"/v1/credit_notes", "POST", "crash_after", times=3
    )  # every try of the SDK loses its answer

    with pytest.raises(stripe.APIConnectionError):
        stripe_notes.sync_credit_note(note.pk)
    note.refresh_from_db()
    assert note.sync_state == NoteSync.PENDING and "will retry" in note.sync_error
    assert len(copies_of(double, note)) == 1  # Stripe made it; we do not know its id

    double.advance_time(25 * 3600)  # Stripe has forgotten the idempotency key: the lookup finds it
    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.SYNCED
    the_copy(double, note)
    posts = double.requests_to("POST", r"/v1/credit_notes")
    assert len(posts) == 3 and len({p.idempotency_key for p in posts}) == 1
    assert posts[0].idempotency_key == f"meterline-credit-note-{note.pk}"


def test_a_replayed_credit_note_webhook_records_a_lost_answer_once_and_forgeries_are_held(double, plan):
    invoice = synced(double, plan)
    note = issue(invoice, amount="5.00")
    double.inject(r"/v1/credit_notes", "POST", "crash_after", times=3)
    with pytest.raises(stripe.APIConnectionError):
        stripe_notes.sync_credit_note(note.pk)
    (created,) = double.events("credit_note.created")

    first, again = deliver(created), deliver(created)

    assert first.json()["outcome"] == f"credit note {note.number}: synced"
    assert again.json()["outcome"] == "duplicate: already processed"
    the_copy(double, note)
    assert StripeEvent.objects.get(event_id=created["id"]).invoice == invoice
    forged = {**created, "id": "evt_forged", "data": {"object": {**created["data"]["object"], "total": 1}}}
    assert deliver(forged).json()["outcome"].startswith(stripe_sync.HELD_FOR_REVIEW)
    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.SYNCED
    assert len(double.requests_to("POST", r"/v1/credit_notes")) == 3  # the SDK's tries only


def test_a_refund_note_refunds_the_card_payment_by_its_total(double, plan, eager_tasks):
    invoice = paid_by_card(double, synced(double, plan))

    note = issue(invoice, outcome="refund", amount="12.34")
    assert tasks.sync_credit_note_to_stripe(note.pk) == NoteSync.SYNCED

    copy = the_copy(double, note)
    assert (copy["type"], copy["post_payment_amount"], copy["out_of_band_amount"]) == (
        "post_payment",
        1234,
        None,
    )
    (refund,) = double.refunds
    note.refresh_from_db()
    assert (refund["amount"], refund["status"], note.stripe_refund_id) == (1234, "succeeded", refund["id"])
    assert double.invoice(invoice.stripe_invoice_id)["post_payment_credit_notes_amount"] == 1234


def test_a_credit_balance_note_is_recorded_out_of_band_and_credited_in_our_ledger_once(double, plan):
    invoice = paid_by_card(double, synced(double, plan))

    note = issue(invoice, outcome="credit_balance", amount="20.00")
    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.SYNCED

    copy = the_copy(double, note)
    assert (copy["out_of_band_amount"], copy["refunds"], double.refunds) == (2000, [], [])
    (request,) = double.requests_to("POST", r"/v1/credit_notes")
    assert (
        "credit_amount" not in request.params
    )  # not Stripe's customer balance: it would pay a Stripe invoice
    assert credits.ledger_balance(invoice.tenant) == Decimal("20.00")  # our prepaid ledger


def test_a_refund_of_an_invoice_paid_outside_stripe_fails_visibly_and_changes_nothing_there(double, plan):
    invoice = synced(double, plan)
    double.transition(invoice.stripe_invoice_id, "pay")  # a bank transfer, recorded on Stripe
    deliver(event_for(double, invoice.stripe_invoice_id, "invoice.paid"))

    note = issue(invoice, outcome="refund", amount="1.00")

    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.FAILED
    note.refresh_from_db()
    assert "refund_amount" in note.sync_error and double.credit_notes == [] and double.refunds == []


def test_a_note_lowering_what_is_due_of_an_invoice_stripe_saw_paid_meanwhile_fails_with_both_figures(
    double, plan
):
    invoice = synced(double, plan)
    note = issue(invoice, amount="3.00")
    double.transition(invoice.stripe_invoice_id, "pay_by_card")  # its webhook has not arrived yet

    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.FAILED
    note.refresh_from_db()
    assert "is paid with 0 left to pay" in note.sync_error and double.credit_notes == []


def test_notes_wait_for_their_invoice_to_reach_stripe_and_need_nothing_if_it_never_does(
    double, plan, settings, eager_tasks
):
    invoice = finalized_while_stripe_was_not_configured(settings, billed_tenant(plan), typical_usage())
    note = issue(invoice, amount="2.00")
    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.PENDING
    assert stripe_notes.WAITING_FOR_INVOICE in CreditNote.objects.get(pk=note.pk).sync_error
    assert note.pk in stripe_notes.credit_notes_to_sync(note.issued_at)

    assert tasks.sync_invoice_to_stripe(invoice.pk) == Invoice.SyncState.SYNCED  # and then its notes

    the_copy(double, note)
    settled = finalized_while_stripe_was_not_configured(
        settings, billed_tenant(make_plan("other")), typical_usage()
    )
    whole = issue(settled)  # credited in full before it reached Stripe: paid here, never sent
    assert tasks.sync_invoice_to_stripe(settled.pk) == Invoice.SyncState.NOT_SYNCED
    assert stripe_notes.sync_credit_note(whole.pk) == NoteSync.NOT_NEEDED
    assert not [i for i in double.invoices if i["metadata"].get("meterline_invoice_id") == str(settled.pk)]


def test_the_reconcile_beat_pushes_notes_issued_while_stripe_was_not_configured(double, plan, settings):
    invoice = synced(double, plan)
    key, settings.STRIPE_API_KEY = settings.STRIPE_API_KEY, ""
    note = issue(invoice, amount="4.00")
    assert stripe_notes.sync_credit_note(note.pk) == NoteSync.NOT_SYNCED  # Stripe is off: nothing is sent
    settings.STRIPE_API_KEY = key

    assert stripe_notes.credit_notes_to_sync(note.issued_at) == []  # the on-commit task's grace
    queued = stripe_notes.credit_notes_to_sync(note.issued_at + stripe_notes.UNSYNCED_GRACE)
    assert queued == [note.pk]
    assert tasks.sync_credit_note_to_stripe(note.pk) == NoteSync.SYNCED
    the_copy(double, note)
    assert stripe_notes.credit_notes_to_sync(note.issued_at + timedelta(days=1)) == []


@pytest.mark.parametrize(
    ("currency", "fee", "rate"), [("JPY", "4900", 10), ("KWD", "49.000", 5), ("USD", "49.00", 20)]
)
def test_stripes_credit_note_totals_equal_ours_in_minor_units(double, currency, fee, rate, settings):
    settings.SELLER_COUNTRY = "FR"
    TaxRate.objects.create(name="T", country="JP", percent=Decimal(rate), effective_from=date(2024, 1, 1))
    agent = billed_tenant(make_plan(slug=f"p-{currency}", base_fee=fee, currency=currency), currency=currency)
    BillingProfile.objects.create(
        tenant=agent.tenant, legal_name="K", address_line1="1", city="Tokyo", country="JP", is_business=False
    )
    invoice = finalized(agent, typical_usage())
    assert stripe_sync.sync_invoice(invoice.pk) == Invoice.SyncState.SYNCED
    invoice.refresh_from_db()
    notes = [issue(invoice, amount=str(Decimal(fee) / 7).split(".")[0]), issue(invoice)]
    for note in notes:
        assert stripe_notes.sync_credit_note(note.pk) == NoteSync.SYNCED
        the_copy(double, note)
    stripe_invoice = double.invoice(invoice.stripe_invoice_id)
    assert stripe_invoice["pre_payment_credit_notes_amount"] == to_minor_units(invoice.total, currency)
    assert sum(to_minor_units(n.total, currency) for n in notes) == stripe_invoice["total"]
    assert sum(to_minor_units(n.tax_amount, currency) for n in notes) == to_minor_units(
        invoice.lines.get(kind="tax").amount, currency
    )
