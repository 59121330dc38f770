"""Invoice pages: detail, printable page and PDF read like an invoice (unit prices, dates, whole model names)
and an open invoice synced to Stripe can be paid from its page."""

import re
from datetime import UTC, date, datetime, timedelta
from io import BytesIO

import pytest
from django.test import Client
from pypdf import PdfReader

from billing import invoicing
from billing.models import Invoice
from tests.billing.builders import M, make_plan, store, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory
from tests.payments.conftest import double, plan  # noqa: F401 - fixtures
from tests.payments.stripe_world import deliver, paid_event, synced
from tests.stripe_double.fixtures import fast_stripe_retries, stripe_double  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

LONG_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"


def pdf_text(response) -> str:
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    return "\n".join(page.extract_text() for page in PdfReader(BytesIO(response.content)).pages)


def member_client(tenant) -> Client:
    client = Client()
    client.force_login(MembershipFactory(tenant=tenant).user)
    return client


def test_invoice_pages_and_pdf(world, owner_client):
    invoice = world.invoices[0]
    assert invoice.number in owner_client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert "data-print" in owner_client.get(f"/invoices/{invoice.pk}/print/").content.decode()  # portal.js
    assert invoice.number in pdf_text(owner_client.get(f"/invoices/{invoice.pk}/pdf/"))


def test_unit_prices_say_per_what_on_the_page_the_print_view_and_the_pdf(world, owner_client):
    invoice = world.invoices[0]
    by_meter = {line.meter: line for line in invoice.lines.all()}
    assert by_meter["stt_audio_seconds"].unit_size == 60 and by_meter["tts_audio_seconds"].unit_price == 0
    expected = ["$0.012 per minute", "$49.00 per month", "per 1M tokens", "included"]
    pages = [owner_client.get(f"/invoices/{invoice.pk}/{view}").content.decode() for view in ("", "print/")]
    for text in [*pages, pdf_text(owner_client.get(f"/invoices/{invoice.pk}/pdf/"))]:
        for phrase in expected:
            assert phrase in text
        assert not re.search(r"\$[\d.,]+ / [\d,]+", text)  # "$0.012 / 60"


def test_the_print_view_and_pdf_give_the_period_by_its_days_and_the_issue_and_due_dates(world, owner_client):
    invoice = world.invoices[0]
    issued = invoice.finalized_at.astimezone(UTC).date()  # the world's tenants are on UTC
    due = issued + timedelta(days=30)
    last_day = invoice.period_end - timedelta(days=1)
    printed = owner_client.get(f"/invoices/{invoice.pk}/print/").content.decode()
    assert "(exclusive" not in printed
    assert (
        f"Period {invoice.period_start.day} {invoice.period_start:%B %Y} – {last_day.day} {last_day:%B %Y}"
        in printed
    )
    assert f"issued {issued.day} {issued:%B %Y} · due {due.day} {due:%B %Y}" in printed
    text = pdf_text(owner_client.get(f"/invoices/{invoice.pk}/pdf/"))
    assert f"Issued: {issued:%d %b %Y} · Due: {due:%d %b %Y}" in text
    assert f"Period: {invoice.period_start:%d %b %Y} – {last_day:%d %b %Y}" in text
    detail = owner_client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert f"due {due.day} {due:%b %Y}" in detail


@pytest.mark.parametrize(
    "model",
    [
        LONG_MODEL,
        "accounts/fireworks/models/llama-v3p1-405b-instruct-long-context-preview",
        "x" * 120,  # nothing to break at: cut at the column's width, but nothing is lost
        "<b>model</b> & sons",
    ],
)
def test_the_pdf_breaks_long_model_names_only_after_a_separator(model):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    prices = [{"meter_id": "llm_input_text_tokens", "unit_amount": "0.30", "unit_size": M}]
    subscribe(agent.tenant, make_plan("any-model", prices=prices))
    store(agent, datetime(2026, 3, 5, tzinfo=UTC), {"llm_input_text_tokens": 5000}, "e-1", model=model)
    invoice = invoicing.finalize_invoice(
        invoicing.generate_invoice(agent.tenant_id, date(2026, 3, 1)).pk, force=True
    )

    text = pdf_text(member_client(agent.tenant).get(f"/invoices/{invoice.pk}/pdf/"))
    description = f"llm_input_text_tokens: api.openai.com {model}"
    breaks = line_breaks(description, text)  # the whole name is there, in order
    if model != "x" * 120:
        assert breaks <= word_ends(description), (breaks, text)


def line_breaks(description: str, text: str) -> set[int]:
    """Where (as offsets into ``description``) the PDF's text of it breaks across lines."""
    found = re.search(r"\s*".join(re.escape(c) for c in description if c != " "), text)
    assert found, text
    breaks, offset = set(), 0
    for char in found.group(0):
        if char == "\n":
            breaks.add(offset)
        elif not char.isspace():
            offset = description.index(char, offset) + 1
    return breaks


def word_ends(description: str) -> set[int]:
    """The offsets a line may break at: after a space, "-", "_" or "/"."""
    return {n + 1 for n, c in enumerate(description) if c in " -_/"} | {
        n for n, c in enumerate(description) if c == " "
    }


def test_an_open_invoice_synced_to_stripe_can_be_paid_from_its_page(double, plan):  # noqa: F811
    invoice = synced(double, plan)
    copy = double.invoice(invoice.stripe_invoice_id)
    assert invoice.hosted_invoice_url == copy["hosted_invoice_url"] and invoice.status == Invoice.Status.OPEN
    client = member_client(invoice.tenant)
    page = client.get(f"/invoices/{invoice.pk}/").content.decode()
    assert f'<a class="button" href="{copy["hosted_invoice_url"]}"' in page and "Pay now" in page
    assert invoice.due_on == datetime.fromtimestamp(copy["due_date"], UTC).date()  # Stripe's terms are ours
    assert copy["hosted_invoice_url"] in pdf_text(client.get(f"/invoices/{invoice.pk}/pdf/"))

    assert deliver(paid_event(double, invoice)).status_code == 200
    assert "Pay now" not in client.get(f"/invoices/{invoice.pk}/").content.decode()


def test_no_pay_button_without_a_stripe_page_or_on_a_draft(world, owner_client):
    invoice = world.invoices[0]
    assert invoice.status == Invoice.Status.OPEN and not invoice.hosted_invoice_url
    assert "Pay now" not in owner_client.get(f"/invoices/{invoice.pk}/").content.decode()
    draft = invoicing.generate_invoice(invoice.tenant_id, invoice.period_end)
    Invoice.objects.filter(pk=draft.pk).update(hosted_invoice_url="https://invoice.stripe.com/i/x")
    page = owner_client.get(f"/invoices/{draft.pk}/").content.decode()
    assert "Pay now" not in page and "due" not in page
    assert "Draft: not issued yet" in pdf_text(owner_client.get(f"/invoices/{draft.pk}/pdf/"))
