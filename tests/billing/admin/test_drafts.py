"""Drafts follow admin edits at once: after a plan or subscription change the tenant's draft says what the
dashboard says (billing.selectors.current_spend), without waiting for the beat refresh."""

from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.urls import reverse

from billing import selectors
from billing.models import Invoice
from tests.billing.admin.pages import add_inline_row, form_data
from tests.billing.builders import make_plan

pytestmark = pytest.mark.django_db

M = Decimal(1_000_000)


def line(invoice: Invoice, meter: str):
    return invoice.lines.get(kind="usage", meter=meter)


def test_a_price_changed_on_the_version_page_moves_the_draft_to_the_dashboards_figure(
    staff_client, draft, plan, eager_tasks, django_capture_on_commit_callbacks
):
    before = line(draft, "llm_input_text_tokens")
    url = reverse("admin:billing_planversion_change", args=[plan.versions.get().pk])
    data = form_data(staff_client.get(url))
    row = next(k for k, v in data.items() if k.endswith("-meter") and v == "llm_input_text_tokens")
    data[row.replace("-meter", "-unit_amount")] = "30"  # 0.30 → 30 USD per million

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(url, data).status_code == 302

    draft.refresh_from_db()
    new_amount = (before.quantity * 30 / M).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert new_amount > before.amount
    assert line(draft, "llm_input_text_tokens").amount == new_amount
    assert draft.total == selectors.current_spend(draft.tenant).total


def test_a_price_changed_on_its_own_page_or_deleted_refreshes_the_draft(
    staff_client, draft, plan, eager_tasks, django_capture_on_commit_callbacks
):
    price = plan.versions.get().prices.get(meter_id="llm_output_text_tokens")
    url = reverse("admin:billing_price_change", args=[price.pk])
    data = form_data(staff_client.get(url))
    data["minimum_charge"] = "25"
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(url, data).status_code == 302
    draft.refresh_from_db()
    usage = draft.lines.filter(meter="llm_output_text_tokens", kind__in=["usage", "minimum"])
    assert sum(line.amount for line in usage) == Decimal(25)  # the minimum tops the price up to 25 USD
    assert draft.total == selectors.current_spend(draft.tenant).total

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("admin:billing_price_delete", args=[price.pk]), {"post": "yes"})
    assert response.status_code == 302
    draft.refresh_from_db()
    assert not draft.lines.filter(meter="llm_output_text_tokens", kind="usage").exists()
    assert draft.unmatched and {u["meter"] for u in draft.unmatched} == {"llm_output_text_tokens"}
    assert draft.total == selectors.current_spend(draft.tenant).total


def test_switching_the_tenants_plan_refreshes_its_draft(
    staff_client, draft, eager_tasks, django_capture_on_commit_callbacks
):
    tenant = draft.tenant
    scale = make_plan("scale", base_fee="99.00")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = add_inline_row(
        form_data(staff_client.get(url)),
        "subscriptions",
        {"plan": str(scale.pk), "starts_on": draft.period_start.isoformat()},
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(url, data).status_code == 302

    draft.refresh_from_db()
    assert [(fee.amount, fee.plan_version.plan) for fee in draft.lines.filter(kind="base_fee")] == [
        (Decimal("99.00"), scale)
    ]
    assert draft.total == selectors.current_spend(tenant).total


def test_a_plan_edit_leaves_tenants_on_other_plans_alone(
    staff_client, draft, plan, eager_tasks, django_capture_on_commit_callbacks
):
    other = make_plan("other", base_fee="1.00", effective_from=date(2026, 1, 1))
    generated_at = draft.generated_at
    url = reverse("admin:billing_planversion_change", args=[other.versions.get().pk])
    data = form_data(staff_client.get(url))
    data["base_fee"] = "2.00"

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(url, data).status_code == 302

    draft.refresh_from_db()
    assert draft.generated_at == generated_at
