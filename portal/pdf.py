"""Invoice and credit note PDFs with ReportLab (pure Python: no system libraries, so it works on any machine).

Every text that comes from data (tenant names, model names, meter codes) is escaped: ReportLab reads
paragraphs as markup. Model names are long single words (``gemini-2.5-flash-native-audio-preview-12-2025``)
that ReportLab would cut anywhere, ``2.`` on one line and ``5`` on the next; they are broken here instead,
after a ``-``, ``_`` or ``/``, so every piece of a name stays readable (a piece that alone is wider than the
column, such as a long id without separators, is cut at the width as a last resort).
"""

from __future__ import annotations

import re
from io import BytesIO
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing import selectors as billing_selectors
from billing.models import CreditNote, Invoice
from billing.money import format_money, format_quantity

FONT, FONT_SIZE = "Helvetica", 8
# Description, quantity, free, billable, unit price, amount: A4 less the margins (174 mm).
COLUMNS = [62 * mm, 20 * mm, 15 * mm, 20 * mm, 35 * mm, 22 * mm]
CELL_PADDING = 12  # points: ReportLab's default cell padding, left and right together
_BREAK_AFTER = re.compile(r"(?<=[-_/])")


def _pieces(word: str, width: float) -> list[str]:
    """``word`` in pieces no wider than ``width``: whole parts between separators, joined while they fit."""
    pieces: list[str] = []
    for part in _BREAK_AFTER.split(word):
        while stringWidth(part, FONT, FONT_SIZE) > width:  # no separator left: cut at the width
            fits = (i for i in range(len(part), 1, -1) if stringWidth(part[:i], FONT, FONT_SIZE) <= width)
            cut = next(fits, 1)
            pieces.append(part[:cut])
            part = part[cut:]
        if pieces and stringWidth(pieces[-1] + part, FONT, FONT_SIZE) <= width:
            pieces[-1] += part
        elif part:
            pieces.append(part)
    return pieces


def wrapped(text: str, width: float) -> str:
    """Paragraph markup for plain ``text`` in a column ``width`` points wide: escaped, with line breaks
    placed between the pieces of any word too long for a line (ReportLab wraps the rest at spaces)."""
    return " ".join("<br/>".join(escape(p) for p in _pieces(word, width)) for word in text.split(" "))


def _document(buffer: BytesIO, title: str) -> SimpleDocTemplate:
    return SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        title=title,
        author="Meterline",
    )


def _table(rows: list[list], widths: list[float]) -> Table:
    """A table of lines: a bold header row and a bold total row, zebra rows between, numbers right-aligned."""
    table = Table(rows, colWidths=widths, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), FONT_SIZE),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("LINEABOVE", (0, -1), (-1, -1), 0.6, colors.black),
                ("ROWBACKGROUNDS", (0, 1), (-1, -2), [colors.white, colors.HexColor("#f4f5f7")]),
            ]
        )
    )
    return table


def _cell_style() -> ParagraphStyle:
    return ParagraphStyle(
        "cell", parent=getSampleStyleSheet()["BodyText"], fontName=FONT, fontSize=FONT_SIZE, leading=10
    )


def render_invoice(invoice: Invoice) -> bytes:
    styles = getSampleStyleSheet()
    cell = _cell_style()
    number_cell = ParagraphStyle("number", parent=cell, alignment=TA_RIGHT)
    buffer = BytesIO()
    doc = _document(buffer, f"Invoice {invoice.number or 'draft'}")
    tenant, currency = invoice.tenant, invoice.currency
    parties = billing_selectors.invoice_parties(invoice)
    if invoice.issued_on:
        dates = f"Issued: {invoice.issued_on:%d %b %Y} · Due: {invoice.due_on:%d %b %Y}"
    else:
        dates = "Draft: not issued yet; its amounts follow usage until the period is finalized."
    story = [
        Paragraph("Meterline", styles["Title"]),
        Paragraph(
            f"Invoice {escape(invoice.number or '(draft)')} — {invoice.get_status_display()}",
            styles["Heading2"],
        ),
        Paragraph("From: " + _party(parties["seller"]), styles["Normal"]),
        Paragraph("Billed to: " + _party(parties["buyer"]), styles["Normal"]),
        Paragraph(
            f"Period: {invoice.period_start:%d %b %Y} – {invoice.last_day:%d %b %Y} ({escape(tenant.timezone)} time)",
            styles["Normal"],
        ),
        Paragraph(dates, styles["Normal"]),
    ]
    if invoice.payment_url:
        url = escape(invoice.payment_url, {'"': "&quot;"})
        story.append(Paragraph(f'Pay online: <link href="{url}" color="blue">{url}</link>', styles["Normal"]))
    story.append(Spacer(1, 6 * mm))
    rows: list[list] = [["Description", "Quantity", "Free", "Billable", "Unit price", "Amount"]]
    for line in billing_selectors.invoice_lines(invoice):
        rows.append(
            [
                Paragraph(wrapped(line.description, COLUMNS[0] - CELL_PADDING), cell),
                format_quantity(line.quantity),
                format_quantity(line.allowance) if line.allowance else "",
                format_quantity(line.billable_quantity),
                # the PDF's standard fonts have no "≈"
                Paragraph(escape(line.unit_price_text.replace("≈", "~")), number_cell),
                format_money(line.amount, currency),
            ]
        )
    rows.append(["", "", "", "", "Total", format_money(invoice.total, currency)])
    story.append(_table(rows, COLUMNS))
    taxes = billing_selectors.tax_breakdown(invoice)
    if taxes:
        story.append(Spacer(1, 4 * mm))
        story.append(Paragraph("Tax", styles["Heading4"]))
        for row in taxes:
            base = f" on {format_money(row['base'], currency)}" if row["base"] is not None else ""
            story.append(
                Paragraph(
                    wrapped(f"{row['name']}: {format_money(row['tax'], currency)}{base}", 170 * mm),
                    styles["BodyText"],
                )
            )
    if invoice.unmatched:
        story += [
            Spacer(1, 5 * mm),
            Paragraph("Usage without a price (not billed, under review):", styles["Heading4"]),
        ]
        width = doc.width
        for item in invoice.unmatched:
            text = f"{item['meter']} {item['provider']} {item['model']}: {format_quantity(item['quantity'])}"
            story.append(Paragraph(wrapped(text, width), styles["BodyText"]))
    doc.build(story)
    return buffer.getvalue()


# Description, quantity, amount credited (174 mm).
NOTE_COLUMNS = [122 * mm, 26 * mm, 26 * mm]
OUTCOME_SENTENCES = {
    CreditNote.Outcome.REDUCE_DUE: "Deducted from what is due on the invoice.",
    CreditNote.Outcome.REFUND: "Refunded to the card that paid the invoice.",
    CreditNote.Outcome.CREDIT_BALANCE: "Added to your prepaid credit balance.",
}


def render_credit_note(note: CreditNote) -> bytes:
    """A credit note laid out like its invoice: the parties the invoice names, the invoice it credits, the reason,
    the lines credited, then the note's totals (billing.selectors.credit_note_totals)."""
    styles = getSampleStyleSheet()
    cell = _cell_style()
    invoice, currency = note.invoice, note.currency
    parties = billing_selectors.invoice_parties(invoice)
    buffer = BytesIO()
    doc = _document(buffer, f"Credit note {note.number}")
    issued = note.issued_at.astimezone(ZoneInfo(invoice.tenant.timezone))
    reason = note.get_reason_display() + (f" — {note.memo}" if note.memo else "")
    story = [
        Paragraph("Meterline", styles["Title"]),
        Paragraph(f"Credit note {escape(note.number)}", styles["Heading2"]),
        Paragraph("From: " + _party(parties["seller"]), styles["Normal"]),
        Paragraph("Credited to: " + _party(parties["buyer"]), styles["Normal"]),
        Paragraph(
            f"Issued: {issued:%d %b %Y} · Credits invoice {escape(invoice.number or '')} of "
            f"{invoice.issued_on:%d %b %Y} (period {invoice.period_start:%d %b %Y} – {invoice.last_day:%d %b %Y})",
            styles["Normal"],
        ),
        Paragraph(wrapped(f"Reason: {reason}", doc.width), styles["Normal"]),
        Paragraph(OUTCOME_SENTENCES[note.outcome], styles["Normal"]),
        Spacer(1, 6 * mm),
    ]
    rows: list[list] = [["Description", "Quantity", "Amount credited"]]
    for line in note.scoped("lines").order_by("position"):
        rows.append(
            [
                Paragraph(wrapped(line.description, NOTE_COLUMNS[0] - CELL_PADDING), cell),
                "" if line.quantity is None else format_quantity(line.quantity),
                format_money(line.amount, currency),
            ]
        )
    for label, amount, _ in billing_selectors.credit_note_totals(note):
        rows.append(
            [
                Paragraph(wrapped(label, NOTE_COLUMNS[0] - CELL_PADDING), cell),
                "",
                format_money(amount, currency),
            ]
        )
    story.append(_table(rows, NOTE_COLUMNS))
    doc.build(story)
    return buffer.getvalue()


def _party(party: dict) -> str:
    """A seller or buyer on one line: name, address, country, tax id, e-mail (escaped)."""
    parts = [party.get("legal_name") or party.get("name") or "", *party.get("address", [])]
    if party.get("country"):
        parts.append(party["country"])
    if party.get("tax_id"):
        parts.append(f"tax id {party['tax_id']}")
    text = ", ".join(escape(str(p)) for p in parts if p)
    if party.get("email"):
        text += f" &lt;{escape(party['email'])}&gt;"
    return text
