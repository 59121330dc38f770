"""The invoice list, one invoice, its printable page and its PDF; an invoice's credit notes, each printable and
as a PDF (decision 020: staff issue them in the admin; tenants read them here)."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_safe

from billing import credit_notes
from billing import selectors as billing_selectors
from billing.models import CreditNote, Invoice
from portal import pdf
from portal.access import activate_tenant_timezone, tenant_view
from usage.models import meter_names


@tenant_view()
def invoices(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    return render(
        request,
        "portal/invoices.html",
        {
            "invoices": billing_selectors.invoices_for(tenant),
            "credit_notes": billing_selectors.credit_notes_for(tenant),
        },
    )


def _invoice(request, pk: int) -> Invoice:
    return get_object_or_404(
        Invoice.objects.for_tenant(request.access.tenant).select_related("tenant"), pk=pk
    )


def _invoice_page(request, pk: int, template: str):
    activate_tenant_timezone(request)
    invoice = _invoice(request, pk)
    return render(
        request,
        template,
        {
            "invoice": invoice,
            "lines": billing_selectors.invoice_lines(invoice),
            "meter_names": meter_names(),
            "parties": billing_selectors.invoice_parties(invoice),
            "taxes": billing_selectors.tax_breakdown(invoice),
            "credit_notes": billing_selectors.credit_notes_for(request.access.tenant, invoice),
            "credited": credit_notes.credited(invoice),
            "amount_due": credit_notes.amount_due(invoice),
        },
    )


@tenant_view()
def invoice_detail(request, pk: int):
    return _invoice_page(request, pk, "portal/invoice_detail.html")


@tenant_view()
def invoice_print(request, pk: int):
    """The invoice laid out for the browser's print dialog."""
    return _invoice_page(request, pk, "portal/invoice_print.html")


@tenant_view()
def invoice_pdf(request, pk: int):
    invoice = _invoice(request, pk)
    response = HttpResponse(pdf.render_invoice(invoice), content_type="application/pdf")
    response["Content-Disposition"] = (
        f'inline; filename="{invoice.number or "draft-" + str(invoice.period_start)}.pdf"'
    )
    response["Cache-Control"] = "private, no-store"
    return response


def _credit_note(request, pk: int) -> CreditNote:
    return get_object_or_404(
        CreditNote.objects.for_tenant(request.access.tenant)
        .filter(invoice__tenant=request.access.tenant)
        .select_related("invoice", "invoice__tenant"),
        pk=pk,
    )


@require_safe
@tenant_view()
def credit_note(request, pk: int):
    """A credit note laid out for the browser's print dialog, like its invoice's printable page."""
    activate_tenant_timezone(request)
    note = _credit_note(request, pk)
    return render(
        request,
        "portal/credit_note.html",
        {
            "note": note,
            "invoice": note.invoice,
            "lines": note.scoped("lines").order_by("position"),
            "parties": billing_selectors.invoice_parties(note.invoice),
            "totals": billing_selectors.credit_note_totals(note),
        },
    )


@require_safe
@tenant_view()
def credit_note_pdf(request, pk: int):
    note = _credit_note(request, pk)
    response = HttpResponse(pdf.render_credit_note(note), content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{note.number}.pdf"'
    response["Cache-Control"] = "private, no-store"
    return response
