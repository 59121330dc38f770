"""Credit notes in the admin: issued from an invoice's page (everything left, or amounts and quantities per
line), errors shown on the fields they concern with nothing issued, the notes read only, and only staff allowed
to add credit notes may issue them."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from billing import credit_notes
from billing.models import CreditNote, Invoice
from tests.billing.admin.pages import messages_of
from tests.billing.builders import billed, finalize
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoice():
    return finalize(billed())


def page(invoice: Invoice) -> str:
    return reverse("admin:billing_invoice_credit_note", args=[invoice.pk])


def form(outcome="reduce_due", reason="order_change", memo="", scope="lines", **lines) -> dict:
    return {"outcome": outcome, "reason": reason, "memo": memo, "scope": scope, **lines}


def test_staff_issue_a_note_of_chosen_lines_from_the_invoice_page(staff_client, staff, invoice):
    change = staff_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk])).content.decode()
    assert page(invoice) in change and "Issue credit note" in change
    fee = invoice.lines.get(kind="base_fee")
    stt = invoice.lines.get(meter="stt_audio_seconds")
    shown = staff_client.get(page(invoice))
    assert shown.status_code == 200
    text = shown.content.decode()
    assert f'name="amount_{fee.pk}"' in text and f'name="quantity_{stt.pk}"' in text
    assert f'name="quantity_{fee.pk}"' in text  # a fee's quantity is 1

    response = staff_client.post(
        page(invoice), form(**{f"amount_{fee.pk}": "10.00", f"quantity_{stt.pk}": "300"}), follow=True
    )

    note = CreditNote.objects.get()
    assert response.redirect_chain[-1][0] == reverse("admin:billing_creditnote_change", args=[note.pk])
    assert (
        f"Issued {note.number} on {invoice.number}: 10.06 USD credited (reduce what is due)."
        in messages_of(response)
    )
    assert (note.total, note.issued_by, note.outcome) == (Decimal("10.06"), staff, "reduce_due")
    assert sorted((line.amount, line.quantity) for line in note.lines.all()) == [
        (Decimal("0.06"), Decimal(300)),
        (Decimal("10.00"), None),
    ]
    detail = response.content.decode()
    assert note.number in detail and "10.06 USD" in detail and 'name="_save"' not in detail  # read only
    change = staff_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk])).content.decode()
    assert (
        note.number in change and "41.16 USD" in change
    )  # credited on the invoice's page; what is still due


def test_everything_left_in_one_note_settles_the_invoice_and_the_link_goes_away(staff_client, invoice):
    staff_client.post(page(invoice), form(scope="full", reason="duplicate"))

    note = CreditNote.objects.get()
    invoice.refresh_from_db()
    assert note.total == invoice.total == Decimal("51.22") and invoice.status == "paid"
    change = staff_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk])).content.decode()
    assert page(invoice) not in change


def test_a_form_submitted_twice_issues_one_note(staff_client, invoice):
    key = staff_client.get(page(invoice)).context["form"]["request_key"].value()
    fee = invoice.lines.get(kind="base_fee")
    data = form(request_key=key, **{f"amount_{fee.pk}": "5.00"})

    first = staff_client.post(page(invoice), data)
    again = staff_client.post(page(invoice), data)

    note = CreditNote.objects.get()
    assert (
        first["Location"] == again["Location"] == reverse("admin:billing_creditnote_change", args=[note.pk])
    )
    assert note.request_key == key and note.total == Decimal("5.00")
    fresh = staff_client.get(page(invoice)).context["form"]["request_key"].value()
    assert fresh != key  # a form rendered again is another request
    staff_client.post(page(invoice), form(request_key=fresh, **{f"amount_{fee.pk}": "5.00"}))
    assert CreditNote.objects.count() == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"reason": "other"}, "memo"),
        ({"outcome": "refund"}, "outcome"),
        ({"amount": "49.01"}, "amount"),
        ({"amount": "1.001"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({}, None),  # no line chosen
        ({"amount": "1.00", "quantity": "1"}, "amount"),
    ],
)
def test_errors_are_shown_on_their_field_and_nothing_is_issued(staff_client, invoice, data, field):
    fee = invoice.lines.get(kind="base_fee")
    lines = {f"{k}_{fee.pk}": v for k, v in data.items() if k in ("amount", "quantity")}
    terms = {k: v for k, v in data.items() if k not in ("amount", "quantity")}

    response = staff_client.post(page(invoice), form(**terms, **lines))

    assert response.status_code == 200
    errors = response.context["form"].errors
    key = {"amount": f"amount_{fee.pk}", None: "__all__"}.get(field, field)
    assert errors.get(key), errors
    assert "errornote" in response.content.decode() or "errorlist" in response.content.decode()
    assert not CreditNote.objects.exists()
    invoice.refresh_from_db()
    assert invoice.status == "open" and credit_notes.amount_due(invoice) == Decimal("51.22")


def test_only_staff_allowed_to_add_credit_notes_may_issue_them(client, invoice):
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_invoice", "view_creditnote"]))
    client.force_login(viewer)

    assert client.get(page(invoice)).status_code == 403
    assert client.post(page(invoice), form(scope="full")).status_code == 403
    assert (
        "Issue credit note"
        not in client.get(reverse("admin:billing_invoice_change", args=[invoice.pk])).content.decode()
    )
    assert not CreditNote.objects.exists()
    viewer.user_permissions.add(Permission.objects.get(codename="add_creditnote"))
    client.post(page(invoice), form(scope="full"))
    assert CreditNote.objects.get().issued_by == viewer


def test_credit_notes_are_listed_and_never_edited_or_deleted_in_the_admin(staff_client, invoice):
    credit_notes.issue(invoice.pk, outcome="reduce_due", reason="duplicate")
    note = CreditNote.objects.get()

    listed = staff_client.get(reverse("admin:billing_creditnote_changelist")).content.decode()
    assert note.number in listed and "51.22 USD" in listed
    assert staff_client.get(reverse("admin:billing_creditnote_add")).status_code == 403
    delete = staff_client.post(reverse("admin:billing_creditnote_delete", args=[note.pk]), {"post": "yes"})
    assert delete.status_code == 403 and CreditNote.objects.filter(pk=note.pk).exists()
    assert staff_client.get(page(invoice)).status_code == 200  # nothing left: the form says so
