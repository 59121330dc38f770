"""The Webhooks page in a real browser, under the Content-Security-Policy: an owner adds an endpoint, copies
its secret (shown once), pings a real receiver and sees the delivery, rolls the secret, and deletes after a
confirmation page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from standardwebhooks import Webhook

from tests.factories import USER_PASSWORD, MembershipFactory, TenantFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def owner(live_server, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOKS_ALLOW_HTTP = True
    tenant = TenantFactory(name="Hooked Voice")
    return MembershipFactory(tenant=tenant, role="owner", user__username="hana").user


def test_owner_adds_pings_rolls_and_deletes_an_endpoint(owner, page, live_server, receiver, eager_tasks):
    base = live_server.url
    page.goto(f"{base}/webhooks/")
    page.get_by_label("Username").fill("hana")
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()

    page.get_by_label("URL").fill(receiver.url())
    page.get_by_label("Description").fill("ERP")
    page.get_by_label("invoice.paid").check()
    page.get_by_test_id("add-endpoint").click()
    secret = page.locator("#new-secret-value").inner_text().strip()
    expect(page.locator("main")).to_contain_text("Events: invoice.paid")
    expect(page.locator("button[data-copy]")).to_be_visible()  # shown by portal.js, which the CSP lets run

    page.get_by_test_id("ping").click()
    expect(page.get_by_test_id("deliveries")).to_contain_text("ping")
    expect(page.get_by_test_id("deliveries")).to_contain_text("delivered")
    assert page.locator("#new-secret-value").count() == 0, "the secret is shown once"
    (ping,) = receiver.received
    assert Webhook(secret).verify(ping.body, ping.headers)["type"] == "ping"

    page.get_by_test_id("roll").click()
    rolled = page.locator("#new-secret-value").inner_text().strip()
    assert rolled != secret
    expect(page.get_by_test_id("new-secret")).to_contain_text("24 hours")

    page.get_by_test_id("delete").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete this endpoint?")
    page.get_by_test_id("confirm-delete").click()
    expect(page.locator(".messages")).to_contain_text("deleted")
    expect(page.locator("main")).to_contain_text("No endpoints yet.")
