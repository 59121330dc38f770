"""Price plans and versions in the admin: numbering, and new versions copied from locked ones."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import periods
from billing.models import PlanAuditEntry, PlanVersion, Price, PriceTier
from tests.billing.admin.pages import form_data

pytestmark = pytest.mark.django_db


def price_rows(version: PlanVersion) -> list[tuple]:
    return sorted(
        (
            p.meter_id,
            p.provider,
            p.model_pattern,
            p.price_model,
            p.unit_amount,
            p.unit_size,
            p.free_allowance,
            tuple((t.up_to, t.unit_amount, t.flat_amount) for t in p.tiers.all()),
        )
        for p in version.prices.all()
    )


def test_a_plan_and_its_first_version_added_together_are_numbered_and_audited(staff_client, staff):
    url = reverse("admin:billing_priceplan_add")
    data = form_data(staff_client.get(url))
    data.update(
        {
            "name": "Starter",
            "slug": "starter",
            "currency": "eur",
            "versions-TOTAL_FORMS": "1",
            "versions-0-effective_from": "2026-12-01",
            "versions-0-base_fee": "19",
            "versions-0-fee_per_active_agent": "0",
        }
    )

    response = staff_client.post(url, data)

    assert response.status_code == 302
    version = PlanVersion.objects.get(plan__slug="starter")
    assert (version.version, version.plan.currency) == (1, "EUR")
    assert [e.action for e in PlanAuditEntry.objects.filter(plan=version.plan).order_by("pk")] == [
        "added",
        "added",
    ]


def test_new_version_from_a_locked_one_copies_its_prices_and_tiers(staff_client, staff, locked_version, plan):
    response = staff_client.post(
        reverse("admin:billing_planversion_changelist"),
        {"action": "new_version", "_selected_action": [locked_version.pk]},
    )
    form_url = reverse("admin:billing_planversion_new_version", args=[locked_version.pk])
    assert response.status_code == 302 and response["Location"] == form_url
    page = staff_client.get(form_url)
    next_month = periods.next_month(timezone.localdate())
    assert page.context["form"]["effective_from"].value() == next_month

    response = staff_client.post(form_url, {"effective_from": next_month.isoformat()})

    new = PlanVersion.objects.get(plan=plan, version=2)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:billing_planversion_change", args=[new.pk])
    assert (new.effective_from, new.base_fee, new.is_locked) == (next_month, locked_version.base_fee, False)
    assert price_rows(new) == price_rows(locked_version)
    assert PriceTier.objects.filter(price__version=new).count() == 2
    assert set(Price.objects.filter(version=new).values_list("pk", flat=True)).isdisjoint(
        Price.objects.filter(version=locked_version).values_list("pk", flat=True)
    )
    entry = PlanAuditEntry.objects.get(plan=plan)
    assert (entry.user, entry.action) == (staff, "new_version")
    new_page = staff_client.get(reverse("admin:billing_planversion_change", args=[new.pk]))
    assert 'name="base_fee"' in new_page.content.decode()


def test_a_new_version_cannot_start_inside_an_invoiced_period(staff_client, locked_version, plan, draft):
    inside = draft.period_start + timedelta(days=3)
    form_url = reverse("admin:billing_planversion_new_version", args=[locked_version.pk])

    response = staff_client.post(form_url, {"effective_from": inside.isoformat()})

    assert response.status_code == 200
    assert "are invoiced under this plan" in response.content.decode()
    add_url = reverse("admin:billing_planversion_add")
    data = form_data(staff_client.get(add_url))
    data.update(
        {
            "plan": str(plan.pk),
            "effective_from": inside.isoformat(),
            "base_fee": "0",
            "fee_per_active_agent": "0",
        }
    )
    response = staff_client.post(add_url, data)
    assert response.status_code == 200
    assert "are invoiced under this plan" in response.content.decode()
    assert plan.versions.count() == 1
