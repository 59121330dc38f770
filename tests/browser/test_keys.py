"""API keys in a real browser: a new key's copy button puts it on the clipboard, and revoking asks first."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.factories import USER_PASSWORD, AgentFactory, MembershipFactory, TenantFactory
from tests.usage.builders import event

pytestmark = pytest.mark.slow


@pytest.fixture
def owner(live_server):
    tenant = TenantFactory(name="Keyholder Voice")
    AgentFactory(tenant=tenant, name="front-desk")
    return MembershipFactory(tenant=tenant, role="owner", user__username="kai").user


def post_event(page, base: str, key: str, event_id: str) -> int:
    response = page.context.request.post(
        f"{base}/api/v1/events",
        data={"events": [event(event_id, session_id="copy-check")]},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status


def test_copy_puts_the_new_key_on_the_clipboard_and_revoke_asks_first(owner, page, live_server):
    base = live_server.url
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.goto(f"{base}/agents/")
    page.get_by_label("Username").fill("kai")
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()

    agents = page.locator("select[name=agent]")
    agents.select_option(agents.locator("option", has_text="front-desk").get_attribute("value"))
    page.locator("input[name=label]").fill("copied")
    page.get_by_test_id("create-key").click()
    shown = page.locator("#new-key-value").inner_text().strip()
    copy = page.locator("button[data-copy]")
    expect(copy).to_have_text("Copy")
    expect(copy).to_be_visible()  # shown by portal.js, which the CSP lets run
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == shown
    assert page.evaluate("window.getSelection().toString()").strip() == shown
    assert post_event(page, base, shown, "copied-1") == 200

    page.reload()
    key_id = shown.removeprefix("mlk_live_").split("_")[0]
    row = page.locator(f'tr[data-key-id="{key_id}"]')
    row.get_by_role("link", name="Revoke…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Revoke this key?")
    expect(page.locator("main")).to_contain_text(f"mlk_live_{key_id}_")
    assert post_event(page, base, shown, "copied-2") == 200  # asking revoked nothing

    page.get_by_role("link", name="Cancel").click()
    expect(row.locator(".badge")).to_have_text("active")
    row.get_by_role("link", name="Revoke…").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator(".messages")).to_contain_text(f"Key {key_id} revoked")
    expect(row.locator(".badge")).to_have_text("revoked")
    assert post_event(page, base, shown, "copied-3") == 401
