"""Plan edits in the admin write the audit trail: who changed which field, inlines included."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import PlanAuditEntry, Price
from tests.billing.admin.pages import form_data

pytestmark = pytest.mark.django_db


def test_editing_a_price_in_admin_records_who_changed_what(staff_client, staff, plan):
    price = Price.objects.get(version__plan=plan, meter_id="llm_input_text_tokens")
    url = reverse("admin:billing_price_change", args=[price.pk])
    data = form_data(staff_client.get(url))
    data["unit_amount"] = "0.35"

    response = staff_client.post(url, data)

    assert response.status_code == 302
    price.refresh_from_db()
    assert price.unit_amount == Decimal("0.35")
    entry = PlanAuditEntry.objects.get(plan=plan)
    assert (entry.user, entry.action) == (staff, "changed")
    assert entry.changes == {"unit_amount": ["0.3", "0.35"]}
    assert "llm_input_text_tokens" in entry.object_repr and "Pro v1" in entry.object_repr
    assert entry.at > timezone.now() - timedelta(minutes=1)
    plan_page = staff_client.get(reverse("admin:billing_priceplan_change", args=[plan.pk])).content.decode()
    assert "unit_amount: 0.3 → 0.35" in plan_page


def test_tier_edits_made_inline_are_audited_too(staff_client, staff, plan):
    price = Price.objects.get(version__plan=plan, meter_id="tts_characters")
    url = reverse("admin:billing_price_change", args=[price.pk])
    data = form_data(staff_client.get(url))
    assert data["tiers-0-up_to"] == "500.000000"
    data["tiers-0-up_to"] = "1000"
    data["tiers-1-DELETE"] = "on"
    data["tiers-TOTAL_FORMS"] = "3"
    data.update({"tiers-2-up_to": "", "tiers-2-unit_amount": "0.04", "tiers-2-flat_amount": "0"})

    response = staff_client.post(url, data)

    assert response.status_code == 302, response.context and response.context["errors"]
    assert [(t.up_to, t.unit_amount) for t in price.tiers.all()] == [
        (Decimal(1000), Decimal("0.1")),
        (None, Decimal("0.04")),
    ]
    entries = {e.action: e for e in PlanAuditEntry.objects.filter(plan=plan)}
    assert entries["changed"].changes == {"up_to": ["500", "1000"]}
    assert entries["deleted"].changes["unit_amount"] == ["0.05", None]
    assert entries["added"].changes == {"unit_amount": [None, "0.04"], "flat_amount": [None, "0"]}
    assert {e.user for e in entries.values()} == {staff}
