"""Invoice pages: detail, printable page and PDF."""

import pytest

pytestmark = pytest.mark.django_db


def test_invoice_pages_and_pdf(world, owner_client):
    invoice = world.invoices[0]
    assert invoice.number in owner_client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert "data-print" in owner_client.get(f"/invoices/{invoice.pk}/print/").content.decode()  # portal.js
    pdf = owner_client.get(f"/invoices/{invoice.pk}/pdf/")
    assert pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
