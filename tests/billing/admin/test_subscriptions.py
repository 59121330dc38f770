"""Subscriptions on the tenant page in the admin."""

from datetime import date

import pytest
from django.urls import reverse

from billing import invoicing
from billing.models import Subscription
from tests.billing.admin.pages import add_inline_row, form_data, messages_of
from tests.billing.builders import make_plan, subscribe

pytestmark = pytest.mark.django_db


def test_overlapping_subscriptions_are_refused_on_the_tenant_page(staff_client, tenant, plan):
    subscribe(tenant, plan, starts_on=date(2026, 1, 1), ends_on=date(2026, 6, 1))
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    page = staff_client.get(url)
    assert "subscriptions-TOTAL_FORMS" in page.content.decode()
    data = form_data(page)
    data.update(
        {
            "subscriptions-TOTAL_FORMS": "3",
            "subscriptions-1-plan": str(plan.pk),
            "subscriptions-1-starts_on": "2026-07-01",
            "subscriptions-2-plan": str(plan.pk),
            "subscriptions-2-starts_on": "2026-08-01",
        }
    )

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert "overlaps" in response.content.decode()
    assert Subscription.objects.filter(tenant=tenant).count() == 1


def test_a_subscription_in_an_invoiced_period_cannot_be_deleted_on_the_tenant_page(
    staff_client, tenant, plan
):
    subscription = subscribe(tenant, plan, starts_on=date(2026, 1, 1))
    march = invoicing.generate_invoice(tenant.pk, date(2026, 3, 1))
    invoicing.finalize_invoice(march.pk, force=True)
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = form_data(staff_client.get(url))
    data["subscriptions-0-DELETE"] = "on"

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert "cannot be deleted: periods before 2026-04-01 are invoiced" in response.content.decode()
    assert Subscription.objects.filter(pk=subscription.pk).exists()


@pytest.mark.parametrize("starts_on", [date(2026, 5, 1), date(2026, 5, 17)])
def test_a_new_subscription_after_the_open_one_ends_it_in_the_same_save(
    staff_client, tenant, plan, starts_on
):
    current = subscribe(tenant, plan, starts_on=date(2026, 1, 1))
    scale = make_plan("scale", base_fee="99.00")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = add_inline_row(
        form_data(staff_client.get(url)),
        "subscriptions",
        {"plan": str(scale.pk), "starts_on": starts_on.isoformat()},
    )

    response = staff_client.post(url, data, follow=True)

    assert response.redirect_chain, response.content.decode()
    current.refresh_from_db()
    assert current.ends_on == starts_on
    new = Subscription.objects.get(tenant=tenant, plan=scale)
    assert (new.starts_on, new.ends_on) == (starts_on, None)
    assert f"now ends on {starts_on}" in " ".join(messages_of(response))


def test_a_new_subscription_inside_an_invoiced_period_changes_nothing(staff_client, tenant, plan):
    current = subscribe(tenant, plan, starts_on=date(2026, 1, 1))
    invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, date(2026, 3, 1)).pk, force=True)
    scale = make_plan("scale", base_fee="99.00")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = add_inline_row(
        form_data(staff_client.get(url)), "subscriptions", {"plan": str(scale.pk), "starts_on": "2026-03-15"}
    )

    response = staff_client.post(url, data)

    assert response.status_code == 200
    page = response.content.decode()
    assert "A subscription cannot start on 2026-03-15: periods before 2026-04-01 are invoiced" in page
    assert "cannot end on 2026-03-15" in page
    current.refresh_from_db()
    assert current.ends_on is None
    assert not Subscription.objects.filter(plan=scale).exists()


def test_an_end_cleared_on_purpose_is_not_set_again(staff_client, tenant, plan):
    current = subscribe(tenant, plan, starts_on=date(2026, 1, 1), ends_on=date(2026, 6, 1))
    scale = make_plan("scale", base_fee="99.00")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = form_data(staff_client.get(url))
    data["subscriptions-0-ends_on"] = ""
    data = add_inline_row(data, "subscriptions", {"plan": str(scale.pk), "starts_on": "2026-07-01"})

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert "overlaps the one from 2026-07-01" in response.content.decode()
    current.refresh_from_db()
    assert current.ends_on == date(2026, 6, 1)
