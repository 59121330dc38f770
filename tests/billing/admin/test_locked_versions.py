"""A version a finalized invoice used, and its prices and tiers, are read only in the admin."""

from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import PlanAuditEntry, PlanVersion, Price
from tests.billing.admin.pages import form_data

pytestmark = pytest.mark.django_db


def test_a_locked_version_and_its_prices_cannot_be_changed_in_admin(staff_client, locked_version):
    version_url = reverse("admin:billing_planversion_change", args=[locked_version.pk])
    page = staff_client.get(version_url)
    assert page.status_code == 200
    assert not page.context["adminform"].form.fields
    assert 'name="base_fee"' not in page.content.decode()

    response = staff_client.post(version_url, {"base_fee": "1", "effective_from": "2026-01-01"})

    assert response.status_code == 403
    locked_version.refresh_from_db()
    assert locked_version.base_fee == Decimal("49.00")
    price = locked_version.prices.get(meter_id="tts_characters")
    price_url = reverse("admin:billing_price_change", args=[price.pk])
    assert 'name="tiers-0-up_to"' not in staff_client.get(price_url).content.decode()
    assert staff_client.post(price_url, {"unit_amount": "9"}).status_code == 403
    delete_url = reverse("admin:billing_price_delete", args=[price.pk])
    assert staff_client.post(delete_url, {"post": "yes"}).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [price.pk]}
    confirmation = staff_client.post(reverse("admin:billing_price_changelist"), bulk)
    assert "locked: a finalized invoice used it" in confirmation.content.decode()
    response = staff_client.post(reverse("admin:billing_price_changelist"), {**bulk, "post": "yes"})
    assert response.status_code == 403
    assert Price.objects.filter(pk=price.pk).exists()
    assert not PlanAuditEntry.objects.exists()


def test_a_locked_version_on_its_plans_page_ignores_edits(staff_client, locked_version, plan):
    url = reverse("admin:billing_priceplan_change", args=[plan.pk])
    page = staff_client.get(url)
    data = form_data(page)
    assert data["versions-0-id"] == str(locked_version.pk)
    assert "versions-0-base_fee" not in data  # rendered disabled
    data.update({"versions-0-base_fee": "1", "versions-0-DELETE": "on", "name": "Pro renamed"})

    response = staff_client.post(url, data)

    assert response.status_code == 302
    locked_version.refresh_from_db()
    assert locked_version.base_fee == Decimal("49.00")
    assert PlanVersion.objects.filter(pk=locked_version.pk).exists()
    assert [e.changes for e in PlanAuditEntry.objects.all()] == [{"name": ["Pro", "Pro renamed"]}]
