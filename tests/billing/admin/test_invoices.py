"""Invoices in the admin: the finalize, void and refresh actions, read-only invoices, unmatched usage and the
invoice preview."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from billing import invoicing, period_pricing, periods
from billing.models import Invoice, InvoiceLine, PlanAuditEntry
from tests.billing.admin.pages import messages_of, post_session
from tests.billing.builders import make_plan, subscribe
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_finalize_now_and_void_move_the_status_and_assign_a_number(staff_client, draft):
    changelist = reverse("admin:billing_invoice_changelist")

    response = staff_client.post(
        changelist, {"action": "finalize_now", "_selected_action": [draft.pk]}, follow=True
    )

    draft.refresh_from_db()
    assert response.status_code == 200
    assert draft.status == "open" and re.fullmatch(r"ML-\d{4}-\d{6}", draft.number)
    assert any(m.startswith(f"Finalized {draft.number}") for m in messages_of(response))
    assert draft.lines.exists() and draft.total > 0

    response = staff_client.post(changelist, {"action": "void", "_selected_action": [draft.pk]}, follow=True)

    draft.refresh_from_db()
    assert draft.status == "void"
    assert f"Voided {draft.number}." in messages_of(response)


def test_actions_that_do_not_apply_report_an_error_and_change_nothing(staff_client, draft):
    changelist = reverse("admin:billing_invoice_changelist")

    response = staff_client.post(changelist, {"action": "void", "_selected_action": [draft.pk]}, follow=True)

    assert response.status_code == 200
    assert any("cannot be voided" in m for m in messages_of(response))
    draft.refresh_from_db()
    assert draft.status == "draft"
    invoicing.finalize_invoice(draft.pk, force=True)
    for action in ("finalize_now", "refresh_drafts"):
        response = staff_client.post(
            changelist, {"action": action, "_selected_action": [draft.pk]}, follow=True
        )
        assert response.status_code == 200
        assert any("not changed" in m for m in messages_of(response)), action


def test_refresh_draft_reprices_new_usage(staff_client, draft, agent_client):
    before = draft.total
    post_session(agent_client, session_id="call-2")

    staff_client.post(
        reverse("admin:billing_invoice_changelist"),
        {"action": "refresh_drafts", "_selected_action": [draft.pk]},
    )

    draft.refresh_from_db()
    assert draft.status == "draft" and draft.total > before


def test_the_finalize_button_on_the_invoice_page_runs_the_same_operation(staff_client, draft):
    page = staff_client.get(reverse("admin:billing_invoice_change", args=[draft.pk])).content.decode()
    button = reverse("admin:billing_invoice_operation", args=[draft.pk, "finalize"])
    assert button in page
    assert staff_client.get(button).status_code == 405

    response = staff_client.post(button)

    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.status == "open"


def test_a_finalized_invoice_page_has_no_editable_field_and_a_post_changes_nothing(staff_client, draft):
    invoice = invoicing.finalize_invoice(draft.pk, force=True)
    url = reverse("admin:billing_invoice_change", args=[invoice.pk])

    page = staff_client.get(url)

    assert page.status_code == 200
    assert not page.context["adminform"].form.fields
    html = page.content.decode()
    assert not re.search(r'<(select|textarea)\b|<input(?![^>]*type="(hidden|search)")', html)
    assert f"{invoice.total:,} USD" in html
    response = staff_client.post(url, {"total": "0.01", "status": "paid", "number": "X"})
    assert response.status_code == 403
    stored = Invoice.objects.get(pk=invoice.pk)
    assert (stored.total, stored.status, stored.number) == (invoice.total, "open", invoice.number)


def test_a_draft_invoice_is_read_only_too(staff_client, draft):
    page = staff_client.get(reverse("admin:billing_invoice_change", args=[draft.pk]))
    assert not page.context["adminform"].form.fields
    response = staff_client.post(reverse("admin:billing_invoice_change", args=[draft.pk]), {"total": "1"})
    assert response.status_code == 403


def test_unmatched_usage_is_shown_on_the_invoice_list_and_page(staff_client, agent, agent_client, plan):
    subscribe(agent.tenant, plan)
    post_session(agent_client, "realtime_openai_gpt_realtime")  # gpt-realtime has no price in this plan
    invoice = invoicing.generate_invoice(agent.tenant_id, invoicing.current_period(agent.tenant)[0])
    assert invoice.unmatched

    listing = staff_client.get(reverse("admin:billing_invoice_changelist")).content.decode()
    page = staff_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk])).content.decode()

    assert f"⚠ {len(invoice.unmatched)}" in listing
    assert "matched no price and are not billed" in page
    assert "llm_input_audio_tokens" in page


def test_preview_prices_usage_under_any_plan_and_stores_nothing(staff_client, agent, agent_client, plan):
    post_session(agent_client)
    other = make_plan(slug="cheap", base_fee="5.00")
    start, end = invoicing.current_period(agent.tenant)
    expected = period_pricing.price_period(agent.tenant, start, end, plan=other)
    counts = (Invoice.objects.count(), InvoiceLine.objects.count(), PlanAuditEntry.objects.count())

    response = staff_client.get(
        reverse("admin:billing_invoice_preview"),
        {"tenant": agent.tenant_id, "plan": other.pk, "start": start.isoformat(), "end": end.isoformat()},
    )

    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview["total"] == expected.total > Decimal("5.00")
    assert len(preview["lines"]) == len(expected.lines)
    html = response.content.decode()
    assert f'id="preview-total">{expected.total:,} USD<' in html
    margin = expected.total - expected.platform_cost
    assert f"{margin:,} USD" in html
    assert (Invoice.objects.count(), InvoiceLine.objects.count(), PlanAuditEntry.objects.count()) == counts


def test_preview_defaults_to_the_current_month_and_shows_unmatched_usage(staff_client, agent, agent_client):
    post_session(agent_client, "realtime_openai_gpt_realtime")
    url = reverse("admin:billing_invoice_preview")
    form = staff_client.get(url).context["form"]
    start = periods.month_start(timezone.localdate())
    assert (form["start"].value(), form["end"].value()) == (start, periods.next_month(start))

    response = staff_client.get(
        url,
        {"tenant": agent.tenant_id, "start": start.isoformat(), "end": periods.next_month(start).isoformat()},
    )

    assert response.status_code == 200
    assert "no_subscription" in response.content.decode()  # no plan given and the tenant has none
    assert not Invoice.objects.exists()


def test_preview_refuses_an_empty_period(staff_client, tenant):
    response = staff_client.get(
        reverse("admin:billing_invoice_preview"),
        {"tenant": tenant.pk, "start": "2026-03-01", "end": "2026-03-01"},
    )
    assert response.status_code == 200
    assert "The end must come after the start." in response.content.decode()
    assert response.context["preview"] is None


def test_preview_needs_permission_to_view_invoices(client, tenant):
    user = UserFactory(is_staff=True)
    client.force_login(user)
    url = reverse("admin:billing_invoice_preview")
    assert client.get(url).status_code == 403

    user.user_permissions.add(
        Permission.objects.get(codename="view_invoice", content_type__app_label="billing")
    )

    assert client.get(url).status_code == 200
