"""Logging in and switching tenants in a real browser: the form posts with its CSRF token, a wrong password
is refused on the page, ``next`` is honoured, and the tenant switcher (the portal's one line of JavaScript)
changes what every page shows."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.factories import USER_PASSWORD, MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def member(live_server):
    """A viewer of two tenants, created before the browser starts (no ORM calls inside Playwright's loop)."""
    user = UserFactory(username="dana")
    first = TenantFactory(name="Alpha Voice")
    second = TenantFactory(name="Beta Voice")
    MembershipFactory(user=user, tenant=first, role="viewer")
    MembershipFactory(user=user, tenant=second, role="viewer")
    return user


def test_login_next_and_tenant_switcher(member, page, live_server):
    page.goto(f"{live_server.url}/invoices/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/invoices/$"))

    page.get_by_label("Username").fill("dana")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".messages .error")).to_contain_text("correct username and password")

    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}/invoices/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Invoices")

    switcher = page.get_by_label("Tenant")
    expect(switcher.locator("option:checked")).to_have_text("Alpha Voice")
    switcher.select_option(label="Beta Voice")  # submits on change
    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Beta Voice")
    page.goto(f"{live_server.url}/agents/")
    expect(page.get_by_label("Tenant").locator("option:checked")).to_have_text("Beta Voice")
    expect(page.get_by_test_id("create-key")).to_have_count(0)  # a viewer manages nothing
