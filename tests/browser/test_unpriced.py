"""Unpriced usage is never silent (issue 17 part 2): an event no price matches is reported by the ingest
response, on the dashboard, on its session's page and in the usage explorer, in a real browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.billing.builders import make_plan, subscribe
from tests.factories import USER_PASSWORD, AgentFactory, MembershipFactory, TenantFactory, api_key_for
from tests.usage.builders import event

pytestmark = pytest.mark.slow
SESSION = "legacy-call-1"


@pytest.fixture
def legacy_key(live_server):
    """A tenant on a plan whose LLM prices name gpt-4o-mini, its owner "lee" and an agent's key; made before
    the browser starts (ORM calls outside Playwright's event loop)."""
    tenant = TenantFactory(name="Legacy Voice")
    subscribe(tenant, make_plan())
    MembershipFactory(tenant=tenant, role="owner", user__username="lee")
    return api_key_for(AgentFactory(tenant=tenant, name="old-agent"))


def test_unpriced_usage_is_marked_at_ingest_and_in_the_portal(legacy_key, page, live_server):
    base = live_server.url
    # What LiveKit before 1.2.12 sends: no provider, no model, so the model-specific prices cannot match.
    legacy = event(
        "legacy-1", session_id=SESSION, provider="", model="", usage={"llm_input_text_tokens": 900}
    )
    priced = event("priced-1", session_id=SESSION)
    response = page.context.request.post(
        f"{base}/api/v1/events",
        data={"events": [legacy, priced]},
        headers={"Authorization": f"Bearer {legacy_key}"},
    )
    assert response.status == 200, response.text()
    body = response.json()
    assert body["accepted"] == 2
    assert body["unpriced"] == [
        {"meter": "llm_input_text_tokens", "provider": "", "model": "", "events": 1, "reason": "no_price"}
    ]

    page.goto(f"{base}/")
    page.get_by_label("Username").fill("lee")
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()

    panel = page.get_by_test_id("unpriced-panel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("900")
    page.get_by_test_id("unpriced-fix").click()
    expect(page).to_have_url(f"{base}/usage/?group_by=model")
    marked = page.get_by_test_id("usage-table").locator("tbody tr", has=page.get_by_test_id("unpriced"))
    expect(marked).to_have_count(1)
    expect(marked.get_by_test_id("unpriced")).to_have_attribute(
        "title",
        "No price in your plan for: llm_input_text_tokens 900. Recorded, not billed yet, not in this cost.",
    )

    page.goto(f"{base}/sessions/{SESSION}/")
    expect(page.get_by_test_id("unpriced-notice")).to_be_visible()
    rows = page.locator("tbody tr", has=page.get_by_test_id("unpriced"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("—")  # no provider or model
    expect(rows.first).to_contain_text("900")
