"""A credit note in a real browser: staff issue one line's credit from the invoice's admin page (a refused amount
first shows its error and keeps the input), and the tenant's owner sees it on the invoice and prints it — with
no JavaScript error and nothing the Content-Security-Policy refuses on either side."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.billing.builders import billed, finalize
from tests.factories import USER_PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def invoice(live_server):
    """A finalized invoice of $51.22 (base fee $49.00), a superuser and the tenant's owner; read before the
    browser starts."""
    invoice = finalize(billed())
    UserFactory(username="root", is_staff=True, is_superuser=True)
    MembershipFactory(tenant=invoice.tenant, role="owner", user__username="olga")
    return {"pk": invoice.pk, "number": invoice.number, "fee": invoice.lines.get(kind="base_fee").pk}


def log_in(page, url: str, username: str) -> None:
    page.goto(url)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_staff_issue_a_credit_note_and_the_tenant_sees_and_prints_it(
    invoice, open_browser_window, live_server, screenshot
):
    staff = open_browser_window()
    log_in(staff, f"{live_server.url}/admin/login/", "root")
    staff.goto(f"{live_server.url}/admin/billing/invoice/{invoice['pk']}/change/")
    staff.get_by_role("link", name="Issue credit note").click()
    staff.get_by_label("The amounts or quantities below").check()
    amount = staff.locator(f"input[name='amount_{invoice['fee']}']")
    amount.fill("49.01")
    staff.get_by_role("button", name="Issue the credit note").click()

    expect(staff.locator(".errorlist")).to_contain_text("49.00 USD is left")
    expect(staff.locator(f"input[name='amount_{invoice['fee']}']")).to_have_value("49.01")
    screenshot(staff, "admin-credit-note")
    staff.locator(f"input[name='amount_{invoice['fee']}']").fill("9.00")
    staff.get_by_role("button", name="Issue the credit note").click()
    expect(staff.locator(".messagelist .success")).to_contain_text("Issued CN-")
    number = staff.locator(".messagelist .success").inner_text().split()[1]

    owner = open_browser_window()
    log_in(owner, f"{live_server.url}/login/", "olga")
    owner.goto(f"{live_server.url}/invoices/{invoice['pk']}/")
    expect(owner.get_by_test_id("credit-notes")).to_contain_text(number)
    expect(owner.get_by_test_id("amount-due")).to_have_text("$42.22")
    owner.get_by_role("link", name=number).click()
    expect(owner.get_by_test_id("credit-note-total")).to_have_text("$9.00")
    expect(owner.locator("button[data-print]")).to_be_visible()  # shown by portal.js
    expect(owner.get_by_role("heading")).to_contain_text(f"Credit note {number}")
    screenshot(owner, "credit-note")
