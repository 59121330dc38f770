"""Every billing admin page renders, with the demo billing data."""

import pytest
from django.contrib import admin
from django.urls import reverse

from billing import demo
from billing.models import Invoice, PlanAuditEntry, PlanVersion
from tests.billing.admin.pages import form_data, post_session
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_every_billing_admin_page_renders_with_demo_billing_data(staff_client, agent, agent_client):
    post_session(agent_client)
    post_session(agent_client, "realtime_gemini_live", session_id="call-2")
    MembershipFactory(tenant=agent.tenant)
    demo.load_demo_billing(agent.tenant)
    version = PlanVersion.objects.get(plan__slug="voice-pro")
    plan_url = reverse("admin:billing_priceplan_change", args=[version.plan_id])
    data = form_data(staff_client.get(plan_url))
    data["description"] = "Edited for the audit trail."
    assert staff_client.post(plan_url, data).status_code == 302
    assert PlanAuditEntry.objects.filter(plan=version.plan).exists()

    billing_models = [m for m in admin.site._registry if m._meta.app_label == "billing"]
    assert {m.__name__ for m in billing_models} >= {
        "PricePlan",
        "PlanVersion",
        "Price",
        "ProviderRate",
        "Invoice",
        "PlanAuditEntry",
    }
    for model in billing_models:
        info = (model._meta.app_label, model._meta.model_name)
        assert staff_client.get(reverse("admin:{}_{}_changelist".format(*info))).status_code == 200, info
        for obj in model._default_manager.all()[:3]:
            change = reverse("admin:{}_{}_change".format(*info), args=[obj.pk])
            assert staff_client.get(change).status_code == 200, (info, obj)
        if admin.site._registry[model].has_add_permission(staff_client.get("/admin/").wsgi_request):
            assert staff_client.get(reverse("admin:{}_{}_add".format(*info))).status_code == 200, info
    extra = [
        reverse("admin:tenants_tenant_change", args=[agent.tenant_id]),
        reverse("admin:billing_invoice_preview"),
        reverse("admin:billing_planversion_new_version", args=[version.pk]),
    ]
    for url in extra:
        assert staff_client.get(url).status_code == 200, url
    invoice = Invoice.objects.exclude(status="draft").get()
    start, end = invoice.period_start, invoice.period_end
    response = staff_client.get(
        reverse("admin:billing_invoice_preview"),
        {"tenant": agent.tenant_id, "plan": version.plan_id, "start": start, "end": end},
    )
    assert response.status_code == 200 and response.context["preview"]["lines"]
