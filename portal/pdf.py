"""Invoice PDFs with ReportLab (pure Python: no system libraries, so it works on any machine)."""

from __future__ import annotations

from datetime import timedelta
from io import BytesIO

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing.models import Invoice
from billing.money import format_money, format_quantity


def render_invoice(invoice: Invoice) -> bytes:
    styles = getSampleStyleSheet()
    buffer = BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        title=f"Invoice {invoice.number or 'draft'}",
        author="Meterline",
    )
    tenant, currency = invoice.tenant, invoice.currency
    last_day = invoice.period_end - timedelta(days=1)
    story = [
        Paragraph("Meterline", styles["Title"]),
        Paragraph(
            f"Invoice {invoice.number or '(draft)'} — {invoice.get_status_display()}", styles["Heading2"]
        ),
        Paragraph(
            f"Billed to: {tenant.name}"
            + (f" &lt;{tenant.billing_email}&gt;" if tenant.billing_email else ""),
            styles["Normal"],
        ),
        Paragraph(
            f"Period: {invoice.period_start:%d %b %Y} – {last_day:%d %b %Y} ({tenant.timezone})",
            styles["Normal"],
        ),
        Spacer(1, 6 * mm),
    ]
    rows = [["Description", "Quantity", "Free", "Billable", "Unit price", "Amount"]]
    for line in invoice.lines.all():
        unit = ""
        if line.unit_price is not None:
            per = f" / {format_quantity(line.unit_size)}" if line.unit_size != 1 else ""
            unit = format_money(line.unit_price, currency, precise=True) + per
        rows.append(
            [
                Paragraph(line.description, styles["BodyText"]),
                format_quantity(line.quantity),
                format_quantity(line.allowance) if line.allowance else "",
                format_quantity(line.billable_quantity),
                unit,
                format_money(line.amount, currency),
            ]
        )
    rows.append(["", "", "", "", "Total", format_money(invoice.total, currency)])
    table = Table(rows, colWidths=[70 * mm, 22 * mm, 16 * mm, 22 * mm, 24 * mm, 22 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 8),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("LINEABOVE", (0, -1), (-1, -1), 0.6, colors.black),
                ("ROWBACKGROUNDS", (0, 1), (-1, -2), [colors.white, colors.HexColor("#f4f5f7")]),
            ]
        )
    )
    story.append(table)
    if invoice.unmatched:
        story += [
            Spacer(1, 5 * mm),
            Paragraph("Usage without a price (not billed, under review):", styles["Heading4"]),
        ]
        for item in invoice.unmatched:
            story.append(
                Paragraph(
                    f"{item['meter']} {item['provider']} {item['model']}: {format_quantity(item['quantity'])}",
                    styles["BodyText"],
                )
            )
    doc.build(story)
    return buffer.getvalue()
