"""A tenant's subscriptions cannot change in a period already finalized: changes take effect after it."""

from datetime import date

import pytest

from billing import invoicing
from billing.subscriptions import SubscriptionEdit, first_open_day, invoiced_changes
from tests.billing.builders import make_plan, subscribe
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

RULE = "periods before 2026-04-01 are invoiced: changes take effect on or after 2026-04-01"


@pytest.fixture
def plan(db):
    return make_plan()


@pytest.fixture
def subscription(tenant, plan):
    return subscribe(tenant, plan, starts_on=date(2026, 1, 1))


@pytest.fixture
def march_finalized(tenant, subscription):
    """March 2026 is finalized, April is still a draft: the first open day is 1 April."""
    march = invoicing.generate_invoice(tenant.pk, date(2026, 3, 1))
    invoicing.finalize_invoice(march.pk, force=True)
    invoicing.generate_invoice(tenant.pk, date(2026, 4, 1))


def test_the_first_open_day_is_the_end_of_the_last_finalized_period(tenant, march_finalized):
    assert first_open_day(tenant) == date(2026, 4, 1)


def test_without_a_finalized_invoice_every_day_is_open(tenant, subscription):
    invoicing.generate_invoice(tenant.pk, date(2026, 3, 1))

    assert first_open_day(tenant) is None
    assert first_open_day(TenantFactory.build()) is None
    edit = SubscriptionEdit(subscription.pk, is_deleted=True)
    assert invoiced_changes(tenant, [edit]) == []


def test_a_subscription_that_started_in_an_invoiced_period_cannot_be_deleted(
    tenant, subscription, march_finalized
):
    problems = invoiced_changes(tenant, [SubscriptionEdit(subscription.pk, is_deleted=True)])

    assert problems == [f"{subscription} cannot be deleted: {RULE}."]


def test_a_new_subscription_may_start_on_the_first_open_day_not_before(tenant, plan, march_finalized):
    def new(starts_on):
        return SubscriptionEdit(
            None, values={"plan": plan, "starts_on": starts_on}, changed=frozenset({"plan", "starts_on"})
        )

    assert invoiced_changes(tenant, [new(date(2026, 4, 1))]) == []
    assert invoiced_changes(tenant, [new(date(2026, 3, 31))]) == [
        f"A subscription cannot start on 2026-03-31: {RULE}."
    ]


def test_the_plan_or_start_of_a_subscription_in_an_invoiced_period_cannot_change(
    tenant, subscription, march_finalized
):
    other = make_plan(slug="other")
    edit = SubscriptionEdit(
        subscription.pk, values={"plan": other, "starts_on": date(2026, 1, 1)}, changed=frozenset({"plan"})
    )

    assert invoiced_changes(tenant, [edit]) == [f"{subscription} cannot change its plan or start: {RULE}."]


def test_a_subscription_may_end_after_the_invoiced_periods_not_inside_them(
    tenant, subscription, march_finalized
):
    def ending(ends_on):
        values = {"plan": subscription.plan, "starts_on": subscription.starts_on, "ends_on": ends_on}
        return SubscriptionEdit(subscription.pk, values=values, changed=frozenset({"ends_on"}))

    assert invoiced_changes(tenant, [ending(date(2026, 5, 1))]) == []
    assert invoiced_changes(tenant, [ending(date(2026, 3, 1))]) == [
        f"{subscription} cannot end on 2026-03-01: {RULE}."
    ]


def test_unchanged_and_blank_rows_are_not_changes(tenant, subscription, march_finalized):
    unchanged = SubscriptionEdit(subscription.pk, values={"starts_on": subscription.starts_on})
    blank = SubscriptionEdit(None)

    assert invoiced_changes(tenant, [unchanged, blank]) == []
