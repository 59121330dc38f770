"""Credit notes in the portal: every member of the tenant sees them on the invoice's page and in the invoices list,
each printable and as a PDF with the parties, the invoice it credits, the reason, the lines and the totals;
another tenant's are a 404 (tests/portal/test_access.py holds every route to that). Issuing is staff's, in the
admin: the portal has no form for it."""

from datetime import date
from decimal import Decimal

import pytest
from django.urls import reverse

from billing import credit_notes
from billing.credit_notes import Request
from billing.models import Invoice, TaxRate
from tests.billing.builders import billed, finalize
from tests.factories import MembershipFactory
from tests.portal.test_invoices import member_client, pdf_text

pytestmark = pytest.mark.django_db


@pytest.fixture
def taxed(settings):
    settings.SELLER_NAME, settings.SELLER_COUNTRY = "Voicey SAS", "FR"
    settings.SELLER_ADDRESS, settings.SELLER_TAX_ID = "1 rue de la Paix; 75002 Paris", "FR40303265045"
    TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=date(2024, 1, 1))
    return finalize(billed(tax_country="FR"))


def test_members_see_an_invoices_credit_notes_and_what_is_still_due(taxed):
    invoice: Invoice = taxed
    fee = invoice.lines.get(kind="base_fee")
    note = credit_notes.issue(
        invoice.pk,
        outcome="reduce_due",
        reason="order_change",
        lines=[Request(fee.pk, amount=Decimal("10.00"))],
    )
    assert (note.tax_amount, note.total) == (Decimal("2.00"), Decimal("12.00"))  # 10.00 and its 20 % tax
    viewer = member_client(invoice.tenant)
    MembershipFactory(tenant=invoice.tenant, role="viewer")

    detail = viewer.get(f"/invoices/{invoice.pk}/").content.decode()
    assert note.number in detail and reverse("portal:credit-note", args=[note.pk]) in detail
    assert 'data-testid="credited">$12.00' in detail
    assert 'data-testid="amount-due">$49.46' in detail  # $61.46 less $12.00
    listed = viewer.get("/invoices/").content.decode()
    assert note.number in listed and "$12.00" in listed

    printed = viewer.get(f"/credit-notes/{note.pk}/").content.decode()
    for text in (
        "Voicey SAS",
        "FR40303265045",
        "Buyer",
        invoice.number,
        "order change",
        "Base fee",
        "TVA 20 %",
    ):
        assert text in printed, text
    assert 'data-testid="credit-note-total">$12.00' in printed and "data-print" in printed
    assert "Deducted from what is due on the invoice." in printed
    text = pdf_text(viewer.get(f"/credit-notes/{note.pk}/pdf/"))
    for expected in (f"Credit note {note.number}", invoice.number, "Base fee", "$10.00", "$2.00", "$12.00"):
        assert expected in text, expected


def test_an_inclusive_rate_is_shown_as_contained_and_prepaid_credit_as_deducted(settings):
    TaxRate.objects.create(
        name="GST", country="AU", percent=Decimal(10), inclusive=True, effective_from=date(2024, 1, 1)
    )
    invoice = finalize(billed(tax_country="AU"))
    note = credit_notes.issue(invoice.pk, outcome="reduce_due", reason="duplicate")

    printed = member_client(invoice.tenant).get(f"/credit-notes/{note.pk}/").content.decode()

    assert "Of which GST 10 % (included)" in printed and f'credit-note-total">${note.total}' in printed


def test_another_tenants_credit_note_is_a_404_and_no_portal_route_issues_one(taxed):
    note = credit_notes.issue(taxed.pk, outcome="reduce_due", reason="duplicate")
    stranger = member_client(finalize(billed()).tenant)

    assert stranger.get(f"/credit-notes/{note.pk}/").status_code == 404
    assert stranger.get(f"/credit-notes/{note.pk}/pdf/").status_code == 404
    assert note.number not in stranger.get("/invoices/").content.decode()
    owner = member_client(taxed.tenant)
    page = owner.get(f"/invoices/{taxed.pk}/").content.decode()
    assert (
        "<form" not in page.split("<main>")[1] and "credit-note" in page
    )  # listed, nothing to issue one with
    assert (
        owner.post(f"/credit-notes/{note.pk}/", {"outcome": "refund", "reason": "duplicate"}).status_code
        == 405
    )
    assert taxed.credit_notes.count() == 1
