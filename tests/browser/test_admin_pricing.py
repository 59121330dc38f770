"""Platform staff pricing in the admin, in Chromium at 1366×768: a tiered price added with its tiers in one
save (a refused row keeps everyone's input), a plan switched in one save, tables that fit the window, and the
Meterline brand."""

from __future__ import annotations

import re
from datetime import date

import pytest
from playwright.sync_api import expect

from billing import invoicing, periods
from tests.billing.admin.pages import post_session
from tests.billing.builders import make_plan, subscribe
from tests.factories import USER_PASSWORD, UserFactory

pytestmark = pytest.mark.slow

WINDOW = {"width": 1366, "height": 768}


@pytest.fixture
def pricing(live_server, agent, agent_client):
    """A superuser, a tenant on "Pro" with a session of usage and a draft, and a second plan "Scale".
    Everything the tests look up later is read here, before the browser starts."""
    UserFactory(username="root", is_staff=True, is_superuser=True)
    pro = make_plan()
    scale = make_plan("scale", base_fee="99.00")
    subscribe(agent.tenant, pro)
    post_session(agent_client)
    start, end = invoicing.current_period(agent.tenant)
    draft = invoicing.generate_invoice(agent.tenant_id, start)
    version = pro.versions.get()
    return {
        "tenant": agent.tenant.pk,
        "plan": pro.pk,
        "scale": scale.pk,
        "version": version.pk,
        "price": version.prices.order_by("pk").first().pk,
        "prices": version.prices.count(),
        "invoice": draft.pk,
        "start": start,
        "end": end,
    }


@pytest.fixture
def admin_page(browser, live_server):
    context = browser.new_context(viewport=WINDOW, locale="en-US")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_have_text("Meterline admin")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def new_price_row(page, values: dict[str, str]) -> None:
    """Click "Add another Price" and fill the new row."""
    page.get_by_role("button", name="Add another Price").click()
    row = page.locator("tr.dynamic-prices").last
    for name, value in values.items():
        field = row.locator(f"[name$='-{name}']")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def test_a_graduated_price_is_added_with_its_tiers_and_a_refused_row_keeps_the_input(
    pricing, admin_page, live_server
):
    page = admin_page
    url = f"{live_server.url}/admin/billing/planversion/{pricing['version']}/change/"
    page.goto(url)
    first = page.locator("input[name$='-unit_amount']").first
    first.fill("0.35")
    new_price_row(
        page,
        {
            "meter": "tts_audio_seconds",
            "provider": "ElevenLabs",
            "price_model": "graduated",
            "unit_size": "60",
            "tiers": "600:0.20\n6000:0.15",  # no unbounded last tier: refused
        },
    )
    new_price_row(page, {"meter": "stt_audio_seconds", "provider": "Speechmatics", "unit_amount": "0.01"})
    page.get_by_role("button", name="Save", exact=True).click()

    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".errorlist")).to_contain_text("the last tier must be unbounded")
    expect(page.locator("input[name$='-unit_amount']").first).to_have_value("0.35")
    providers = page.locator("input[name$='-provider']").evaluate_all("inputs => inputs.map(i => i.value)")
    assert {"ElevenLabs", "Speechmatics"} <= set(providers)
    tiers = page.locator("textarea[name$='-tiers']").evaluate_all("areas => areas.map(a => a.value)")
    assert "600:0.20\n6000:0.15" in tiers

    graduated = page.locator("textarea[name$='-tiers']").nth(tiers.index("600:0.20\n6000:0.15"))
    graduated.fill("600:0.20\n6000:0.15\n*:0.10")
    page.get_by_role("button", name="Save and continue editing").click()

    expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
    rows = page.locator("tr.has_original")
    assert rows.count() == pricing["prices"] + 2
    eleven = rows.filter(has=page.locator("input[value='ElevenLabs']"))
    expect(eleven.locator("textarea[name$='-tiers']")).to_have_value("600:0.2\n6000:0.15\n*:0.1")
    expect(eleven.locator("select[name$='-price_model']")).to_have_value("graduated")
    expect(page.locator("input[name$='-unit_amount']").first).to_have_value("0.35")


def test_switching_a_tenants_plan_takes_one_save(pricing, admin_page, live_server):
    page = admin_page
    switch_on = periods.next_month(pricing["start"])
    page.goto(f"{live_server.url}/admin/tenants/tenant/{pricing['tenant']}/change/")
    page.get_by_role("button", name="Add another Subscription").click()
    row = page.locator("tr.dynamic-subscriptions").last
    row.locator("select[name$='-plan']").select_option(str(pricing["scale"]))
    row.locator("input[name$='-starts_on']").fill(switch_on.isoformat())
    page.get_by_role("button", name="Save and continue editing").click()

    expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
    expect(page.locator(".messagelist")).to_contain_text(f"now ends on {switch_on}")
    starts = page.locator("input[name$='-starts_on']").evaluate_all("inputs => inputs.map(i => i.value)")
    ends = page.locator("input[name$='-ends_on']").evaluate_all("inputs => inputs.map(i => i.value)")
    assert list(zip(starts, ends, strict=False))[:2] == [
        (date(2026, 1, 1).isoformat(), switch_on.isoformat()),
        (switch_on.isoformat(), ""),
    ]


def test_admin_tables_fit_a_1366_pixel_window(pricing, admin_page, live_server):
    page = admin_page
    base = f"{live_server.url}/admin"
    preview = f"{base}/billing/invoice/preview/?tenant={pricing['tenant']}&start={pricing['start']}&end={pricing['end']}"
    urls = [
        f"{base}/billing/planversion/{pricing['version']}/change/",
        f"{base}/billing/planversion/add/",
        f"{base}/billing/priceplan/{pricing['plan']}/change/",
        f"{base}/billing/price/{pricing['price']}/change/",
        f"{base}/billing/price/add/",
        f"{base}/tenants/tenant/{pricing['tenant']}/change/",
        f"{base}/billing/invoice/{pricing['invoice']}/change/",
        f"{base}/billing/price/",
        f"{base}/billing/planversion/",
        f"{base}/billing/invoice/",
        f"{base}/billing/providerrate/add/",
        preview,
    ]
    widths = {}
    for url in urls:
        page.goto(url)
        expect(page.locator("#content")).to_be_visible()
        widths[url.removeprefix(base)] = page.evaluate(
            """() => ({
                page: document.documentElement.scrollWidth,
                tables: [...document.querySelectorAll('#content table')].map(t => t.scrollWidth - t.parentElement.clientWidth),
            })"""
        )
    assert {url: w for url, w in widths.items() if w["page"] > WINDOW["width"]} == {}
    assert {url: w["tables"] for url, w in widths.items() if any(over > 0 for over in w["tables"])} == {}
    page.goto(preview)
    expect(page.locator("#preview-lines tbody")).to_contain_text(re.compile(r"USD per 1,000 \(average\)"))
    expect(page).to_have_title(re.compile(r"\| Meterline admin$"))
