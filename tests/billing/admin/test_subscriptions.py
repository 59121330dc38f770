"""Subscriptions on the tenant page in the admin."""

from datetime import date

import pytest
from django.urls import reverse

from billing import invoicing
from billing.models import Subscription
from tests.billing.admin.pages import form_data
from tests.billing.builders import subscribe

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
