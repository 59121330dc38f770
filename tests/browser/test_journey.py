"""A tenant user's journey through the portal in a real browser, on the demo data (DESIGN §8)."""

from __future__ import annotations

import csv
import io
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.usage.builders import event
from usage.demo import DEMO_PASSWORD, DEMO_USERNAME
from usage.meters import METER_NAMES

pytestmark = pytest.mark.slow

METER = "llm_input_text_tokens"  # used by all three captured sessions, so both agents have some


def log_in(page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def post_event(base_url: str, key: str, event_id: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/api/v1/events",
        json={"events": [event(event_id, session_id="browser-key-check")]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_journey_dashboard_usage_csv_keys_invoice(demo, page, live_server, screenshot):
    base = live_server.url
    tenant_name = demo["tenant"].name
    invoice_number = demo["invoice"].number

    # Log in through the form; the portal sends an anonymous visitor there and back.
    page.goto(f"{base}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    log_in(page, DEMO_USERNAME, DEMO_PASSWORD)

    # Dashboard: period spend and the four SVG charts, drawn from the demo usage.
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(tenant_name)
    expect(page.get_by_test_id("period-spend")).to_have_text(re.compile(r"^\$[1-9][\d,]*\.\d\d$"))
    day_bars = page.locator("svg.bar-chart rect.bar")
    assert day_bars.count() > 0
    assert any(float(v) > 0 for v in day_bars.evaluate_all("bars => bars.map(b => b.dataset.value)"))
    assert page.locator("svg.share-chart").count() == 3
    for chart in ("Spend by meter", "Spend by model", "Spend by agent"):
        assert page.locator(f'svg.share-chart[aria-label="{chart}"] rect.bar').count() > 0, chart
    by_agent = page.locator('svg.share-chart[aria-label="Spend by agent"]')
    expect(by_agent).to_contain_text("dental-receptionist")
    expect(by_agent).to_contain_text("skyway-voice")
    expect(page.get_by_text(invoice_number)).to_be_visible()  # last invoice card

    # Usage: the default view (totals per meter), then one meter grouped by agent; the CSV has the same rows.
    page.get_by_role("link", name="Usage", exact=True).click()
    table = page.get_by_test_id("usage-table")
    expect(table).to_be_visible()
    expect(table.locator("tfoot")).to_contain_text(re.compile(r"Total.*\$[\d,]+\.\d\d"))
    meters = table.locator("tbody tr td:first-child").all_inner_texts()
    assert len(meters) == len(set(meters)) > 3  # one row per meter
    screenshot(page, "usage")
    page.locator("select[name=group_by]").select_option("agent")
    page.locator("select[name=meter]").select_option(METER)
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(rf"\?(?=.*group_by=agent)(?=.*meter={METER})"))
    expect(table.locator("thead th").first).to_have_text("Agent")
    # The portal names the meter; the code is on hover and in the CSV.
    expect(table.locator("thead th")).to_have_text(["Agent", METER_NAMES[METER], "Cost"])
    expect(table.locator("thead th").nth(1).locator("span")).to_have_attribute("title", METER)
    shown: dict[str, tuple[Decimal, str]] = {}
    for agent, quantity, cost in table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))"
    ):
        shown[agent] = (Decimal(quantity.replace(",", "")), cost)
    assert set(shown) == {"dental-receptionist", "skyway-voice"}  # one row per agent

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith(f"usage-{demo['tenant'].slug}-")
    exported = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert exported[0] == ["agent", METER, "cost", "currency", "unpriced"]
    assert {
        agent: (Decimal(quantity), f"${Decimal(cost).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}")
        for agent, quantity, cost, _, unpriced in exported[1:]
        if unpriced == ""  # the demo plan prices all of this meter
    } == shown  # the CSV holds the page's rows, cost included

    # Sessions and one session's cost breakdown.
    page.get_by_role("link", name="Sessions", exact=True).click()
    sessions = page.locator("table tbody tr")
    expect(sessions).to_have_count(50)  # a full first page
    screenshot(page, "sessions")
    # A realtime (speech-to-speech) call: short, and its audio tokens make a cost worth showing.
    realtime = sessions.filter(has_text="skyway-voice").filter(has_not_text="$0.00").first
    session_id, listed_cost = (
        realtime.locator("td").first.inner_text(),
        realtime.locator("td").last.inner_text(),
    )
    realtime.locator("a").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Session {session_id}")
    expect(page.get_by_test_id("session-cost")).to_have_text(listed_cost)
    screenshot(page, "session-detail")

    # Invoices: the demo's finalized invoice for last month, its page and its PDF.
    page.get_by_role("link", name="Invoices", exact=True).click()
    screenshot(page, "invoices")
    page.get_by_role("link", name=invoice_number).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(invoice_number)
    lines = page.get_by_test_id("invoice-lines")
    assert lines.locator("tbody tr").count() > 3
    expect(page.get_by_test_id("invoice-total")).to_have_text(re.compile(r"^\$[1-9][\d,]*\.\d\d$"))
    screenshot(page, "invoice-detail")
    pdf = page.context.request.get(base + page.get_by_test_id("pdf-link").get_attribute("href"))
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    assert f'filename="{invoice_number}.pdf"' in pdf.headers["content-disposition"]
    assert pdf.body().startswith(b"%PDF")

    # Agents & keys: create a key, use it against the API, revoke it in the browser, see it refused.
    page.get_by_role("link", name="Agents & keys", exact=True).click()
    screenshot(page, "agents")
    new_key = page.locator('form[action$="/keys/new/"]')
    agent_select = new_key.locator("select[name=agent]")
    agent_select.select_option(agent_select.locator("option", has_text="skyway-voice").get_attribute("value"))
    new_key.locator("input[name=label]").fill("browser-test")
    page.get_by_test_id("create-key").click()
    expect(page.get_by_test_id("new-key")).to_contain_text("shown only once")
    key = page.locator("#new-key-value").inner_text().strip()
    assert key.startswith("mlk_live_")
    key_id = key.removeprefix("mlk_live_").split("_")[0]
    accepted = post_event(base, key, "browser-1")
    assert accepted.status_code == 200, accepted.text

    page.reload()
    expect(page.get_by_test_id("new-key")).to_have_count(0)  # shown once
    row = page.locator(f'tr[data-key-id="{key_id}"]')
    expect(row).to_contain_text("browser-test")
    expect(row.locator(".badge")).to_have_text("active")
    row.get_by_role("link", name="Revoke…").click()
    page.get_by_role(
        "button", name="Revoke key"
    ).click()  # the confirmation page (tests/browser/test_keys.py)
    expect(page.locator(".messages")).to_contain_text(f"Key {key_id} revoked")
    expect(row.locator(".badge")).to_have_text("revoked")
    refused = post_event(base, key, "browser-2")
    assert refused.status_code == 401, refused.text

    # Budget: set one; the budget page and the dashboard show how much of it the period has used.
    page.get_by_role("link", name="Budget", exact=True).click()
    page.get_by_label("Monthly amount").fill("200")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator(".messages")).to_contain_text("Budget saved")
    expect(page.locator(".metric .hint").first).to_contain_text(re.compile(r"[\d.]+% of \$200\.00"))
    screenshot(page, "budget")
    page.get_by_role("link", name="Dashboard", exact=True).click()
    expect(page.locator(".metric", has_text="Budget")).to_contain_text("of $200.00")
    screenshot(page, "dashboard")

    # Log out: the portal is closed again.
    page.get_by_role("button", name="Log out").click()
    page.goto(f"{base}/usage/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/usage/$"))
