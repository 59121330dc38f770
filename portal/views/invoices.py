"""The invoice list, one invoice, its printable page and its PDF."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render

from billing import selectors as billing_selectors
from billing.models import Invoice
from portal import pdf
from portal.access import activate_tenant_timezone, tenant_view
from usage.models import meter_names


@tenant_view()
def invoices(request):
    activate_tenant_timezone(request)
    return render(
        request, "portal/invoices.html", {"invoices": billing_selectors.invoices_for(request.access.tenant)}
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
