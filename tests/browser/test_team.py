"""An invitation walked as two people would: the owner invites an address, the mail's link opens in another
browser, the new person sets a password and lands on the tenant's dashboard."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from playwright.sync_api import expect

from tests.factories import USER_PASSWORD, MembershipFactory, TenantFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def owner(live_server):
    tenant = TenantFactory(name="Inviting Voice")
    return MembershipFactory(tenant=tenant, role="owner", user__username="olu").user


def test_owner_invites_and_a_new_person_joins_through_the_mailed_link(
    owner, page, open_browser_window, live_server
):
    base = live_server.url
    page.goto(f"{base}/team/")
    page.get_by_label("Username").fill("olu")
    page.get_by_label("Password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Log in").click()

    invite = page.locator('form[action$="/team/invitations/"]')
    invite.get_by_label("E-mail").fill("ravi@example.com")
    invite.get_by_label("Role").select_option("admin")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.locator(".messages")).to_contain_text("Invitation sent to ravi@example.com")
    expect(page.get_by_test_id("pending-invitations")).to_contain_text("ravi@example.com")

    assert [m.to for m in mail.outbox] == [["ravi@example.com"]]
    link = re.search(r"http://\S+/invite/\S+/", mail.outbox[0].body).group(0)
    assert link.startswith(base)

    newcomer = open_browser_window()
    newcomer.goto(link)
    expect(newcomer.get_by_role("heading", level=1)).to_have_text("Join Inviting Voice")
    newcomer.get_by_label("Username").fill("ravi")
    newcomer.get_by_label("First name").fill("Ravi")
    newcomer.get_by_label("Last name").fill("Shankar")
    newcomer.get_by_label("Password", exact=True).fill("saffron kettle 1987 orbit")
    newcomer.get_by_label("Password confirmation").fill("saffron kettle 1987 orbit")
    newcomer.get_by_role("button", name="Create account and join").click()

    expect(newcomer).to_have_url(f"{base}/")
    expect(newcomer.get_by_role("heading", level=1)).to_have_text("Inviting Voice")
    expect(newcomer.locator(".messages")).to_contain_text("Welcome to Inviting Voice")
    expect(newcomer.get_by_role("link", name="Agents & keys")).to_be_visible()

    newcomer.goto(link)  # used once, it opens nothing more
    expect(newcomer.get_by_role("heading", level=1)).to_have_text("This invitation link no longer works")

    page.reload()
    expect(page.get_by_test_id("pending-invitations")).to_have_count(0)
    expect(page.locator("table").first).to_contain_text("ravi@example.com")
