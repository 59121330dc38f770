"""Numbers on every admin page read as people write them: amounts to the minor unit, rates and quantities
with the digits they were entered with — never ``0E-12``, never the 6 or 12 places a column stores, never the
29 digits of a computed average."""

import re
from datetime import date
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.urls import reverse

from billing import invoicing, periods
from billing.models import PlanVersion, Price, ProviderRate
from tests.billing.admin.pages import post_session
from tests.billing.builders import make_plan, subscribe
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

SCIENTIFIC = re.compile(r"(?<![\w.-])\d+(\.\d+)?[eE][+-]?\d+(?![\w.-])")  # not inside ids such as a3e5f
STORED_ZEROS = re.compile(r"\d\.\d*000(?!\d)")  # 1000000.000000, 0.300000000000, 49.0000
LONG_FRACTION = re.compile(r"\.\d{13,}")


class ShownText(HTMLParser):
    """What a person reads on the page: text and the values of inputs (not scripts, styles, icons or the
    inputs' attributes such as ``step="1e-12"``)."""

    HIDDEN = {"script", "style", "svg", "title"}

    def __init__(self):
        super().__init__()
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "input" and attributes.get("type") not in ("hidden", "checkbox", "submit"):
            self.parts.append(attributes.get("value") or "")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def shown(response) -> str:
    parser = ShownText()
    parser.feed(response.content.decode())
    return " ".join(parser.parts)


@pytest.fixture
def billed(agent, agent_client):
    """A locked version (a finalized invoice used it), the next version open for edits with a volume price
    and a flat tier amount, a draft with a tiered line, provider rates, and the audit trail of an edit."""
    plan = make_plan()
    tenant = agent.tenant
    subscribe(tenant, plan)
    ProviderRate.objects.create(
        provider="api.openai.com",
        model_pattern="gpt-4o-mini*",
        meter_id="llm_input_text_tokens",
        cost_per_unit=Decimal("0.075"),
        unit_size=Decimal(1_000_000),
        effective_from=date(2026, 1, 1),
    )
    post_session(agent_client)
    start, _ = invoicing.current_period(tenant)
    last_month = invoicing.generate_invoice(tenant.pk, periods.previous_month(start))
    invoicing.finalize_invoice(last_month.pk, force=True)
    draft = invoicing.generate_invoice(tenant.pk, start)
    MembershipFactory(tenant=tenant)
    locked = plan.versions.get()
    open_version = PlanVersion.objects.create(plan=plan, version=2, effective_from=periods.next_month(start))
    volume = Price.objects.create(
        version=open_version, meter_id="tts_characters", price_model="volume", unit_size=1000
    )
    volume.tiers.create(up_to=Decimal(10_000), unit_amount=Decimal("0.075"), flat_amount=Decimal(2))
    volume.tiers.create(up_to=None, unit_amount=Decimal("0.05"))
    return {"plan": plan, "tenant": tenant, "locked": locked, "open": open_version, "draft": draft}


def admin_pages(client, billed) -> dict[str, str]:
    """Every changelist, change page and add page of every registered model, and the billing admin's own
    pages (the preview, the new-version form), each page's shown text by URL."""
    urls = [
        reverse("admin:billing_invoice_preview")
        + f"?tenant={billed['tenant'].pk}&start={billed['draft'].period_start}&end={billed['draft'].period_end}",
        reverse("admin:billing_invoice_preview")
        + f"?tenant={billed['tenant'].pk}&plan={billed['plan'].pk}"
        + f"&start={billed['draft'].period_start}&end={billed['draft'].period_end}",
        reverse("admin:billing_planversion_new_version", args=[billed["locked"].pk]),
    ]
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        urls.append(reverse("admin:{}_{}_add".format(*info)))
        urls += [
            reverse("admin:{}_{}_change".format(*info), args=[pk])
            for pk in model._default_manager.values_list("pk", flat=True)[:20]
        ]
    pages = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code in (200, 403), url
        if response.status_code == 200:
            pages[url] = shown(response)
    return pages


def test_no_admin_page_shows_stored_places_or_scientific_notation(client, billed):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    pages = admin_pages(client, billed)

    wrong = {
        url: sorted(
            {
                m.group(0)
                for pattern in (SCIENTIFIC, STORED_ZEROS, LONG_FRACTION)
                for m in pattern.finditer(text)
            }
        )
        for url, text in pages.items()
    }
    assert {url: found for url, found in wrong.items() if found} == {}
    everything = " ".join(pages.values())
    assert "0.30 USD per 1,000,000" in everything  # a rate in a list: to the minor unit at least
    assert "0.075 USD per 1,000,000" in everything  # … and with the digits it was entered with
    assert "49.00 USD" in everything  # an amount
    assert "USD per 1,000 (average)" in everything  # the preview's tiered line, four significant digits


def test_inputs_and_locked_values_show_what_was_entered(client, billed):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    open_page = client.get(reverse("admin:billing_planversion_change", args=[billed["open"].pk]))
    locked_page = shown(client.get(reverse("admin:billing_planversion_change", args=[billed["locked"].pk])))
    volume = billed["open"].prices.get()
    price_page = client.get(reverse("admin:billing_price_change", args=[volume.pk]))

    prices = open_page.context["inline_admin_formsets"][0].formset.forms
    assert [(f["unit_size"].value(), f["tiers"].value()) for f in prices] == [
        (Decimal(1000), "10000:0.075:2\n*:0.05")
    ]
    assert 'value="1000"' in prices[0]["unit_size"].as_widget()
    assert 'name="base_fee" value="0.00"' in open_page.content.decode().replace('step="0.0001" ', "")
    tiers = price_page.context["inline_admin_formsets"][0].formset.forms
    assert 'value="10000"' in tiers[0]["up_to"].as_widget()
    assert 'value="2.00"' in tiers[0]["flat_amount"].as_widget()
    for text in ("49.00 USD", "0.30 USD", "1,000,000", "500:0.1; *:0.05", "0.012 USD"):
        assert text in locked_page, text
