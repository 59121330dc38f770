"""The Content-Security-Policy in a real browser: the main pages of the portal, the admin and the API docs
work under it, and the console reports no violation (the page fixture fails a test on any)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from billing.models import PlanVersion
from tenants.models import APIKey
from tests.conftest import World
from tests.factories import USER_PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def staff_member(live_server):
    """A platform admin who is also the owner of a tenant with usage, a session and a finalized invoice."""
    world = World()
    user = UserFactory(username="sam", is_staff=True, is_superuser=True)
    MembershipFactory(user=user, tenant=world.tenants[0], role="owner")
    MembershipFactory(user=user, tenant=world.tenants[1], role="viewer")  # so the tenant switcher shows
    return {
        "invoice": world.invoices[0].pk,
        "key": APIKey.objects.get(tenant=world.tenants[0]).pk,
        "tenant": world.tenants[0].pk,
        "other_tenant_name": world.tenants[1].name,
        "plan_version": PlanVersion.objects.first().pk,
    }


def test_the_main_pages_work_under_the_policy(staff_member, page, live_server, csp_violations):
    base = live_server.url
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill("sam")
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/")

    invoice = staff_member["invoice"]
    for path in (
        "/",
        "/usage/?group_by=day",
        "/sessions/",
        "/sessions/call-0/",
        "/invoices/",
        f"/invoices/{invoice}/",
        "/agents/",
        f"/keys/{staff_member['key']}/revoke/",
        "/budget/",
        "/team/",
        "/no-such-page/",
    ):
        page.goto(base + path)
        page.wait_for_load_state("load")
    # The portal's stylesheet applies (a style the policy refused would leave the top bar unstyled) …
    page.goto(f"{base}/")
    assert page.locator(".topbar").evaluate("e => getComputedStyle(e).display") == "flex"
    # … and its script runs: the print button it reveals, and the tenant switcher it submits.
    page.goto(f"{base}/invoices/{invoice}/print/")
    expect(page.get_by_role("button", name="Print")).to_be_visible()
    page.goto(f"{base}/")
    page.get_by_label("Tenant").select_option(label=staff_member["other_tenant_name"])
    expect(page.get_by_role("heading", level=1)).to_have_text(staff_member["other_tenant_name"])

    # The admin: its own scripts (changelist actions, date widgets) and the billing admin's files.
    for path in (
        "/admin/",
        "/admin/billing/invoice/",
        f"/admin/billing/invoice/{invoice}/change/",
        "/admin/billing/invoice/preview/",
        f"/admin/tenants/tenant/{staff_member['tenant']}/change/",
        "/admin/tenants/agent/",
        "/admin/billing/priceplan/",
        f"/admin/billing/planversion/{staff_member['plan_version']}/change/",
        "/admin/billing/priceplan/add/",
    ):
        page.goto(base + path)
        expect(page.locator("#content")).to_be_visible()
    # An invoice operation asks first (billing/admin.js); dismissed, nothing runs.
    change_page = f"{base}/admin/billing/invoice/{invoice}/change/"
    page.goto(change_page)
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    operation = page.locator(".object-tools form button").first
    label = operation.inner_text()
    operation.click()
    page.wait_for_timeout(300)
    assert len(asked) == 1 and asked[0].lower().startswith(label.lower()), (asked, label)
    expect(page).to_have_url(change_page)
    expect(page.locator(".messagelist")).to_have_count(0)
    page.goto(f"{base}/admin/billing/invoice/")
    page.locator("#action-toggle").check()  # actions.js at work
    expect(page.locator(".action-counter")).to_contain_text(re.compile(r"[1-9]\d* of [1-9]\d* selected"))

    # Swagger UI: its bundle and its setup script are files; it renders the operations.
    page.goto(f"{base}/api/docs/")
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/events").first).to_be_visible()

    # The listener sees what the policy refuses: an inline style set by script is one.
    page.goto(f"{base}/")
    page.evaluate("document.body.setAttribute('style', 'color: red')")
    page.wait_for_timeout(200)
    assert any("style" in v for v in csp_violations), csp_violations
    csp_violations.clear()
