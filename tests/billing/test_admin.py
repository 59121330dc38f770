"""The billing admin (DESIGN §8): plans with an audit trail, locked versions, tier checks, invoice actions,
read-only finalized invoices and the invoice preview."""

import re
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from billing import demo, invoicing, period_pricing, periods
from billing.models import Invoice, InvoiceLine, PlanAuditEntry, PlanVersion, Price, PriceTier, Subscription
from tests import livekit_samples as samples
from tests.billing.builders import make_plan, subscribe
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def plan(db):
    return make_plan()


def post_session(agent_client, name="pipeline_deepgram_openai_cartesia", session_id="call-1"):
    response = agent_client.post(
        "/api/v1/livekit/metrics",
        {"session_id": session_id, "metrics": samples.shifted_metrics(samples.load(name))},
    )
    assert response.status_code == 200, response.content


@pytest.fixture
def draft(agent, agent_client, plan):
    """This month's draft for a tenant on ``plan`` with a real LiveKit session of usage."""
    subscribe(agent.tenant, plan)
    post_session(agent_client)
    start, _ = invoicing.current_period(agent.tenant)
    return invoicing.generate_invoice(agent.tenant_id, start)


def form_data(response) -> dict:
    """The body a browser would post back from a rendered admin change form, inlines included."""
    data = {}

    def add(form):
        for bound in form:
            if bound.field.disabled:
                continue  # browsers do not send disabled inputs
            value = bound.value()
            if value is None or value is False:
                continue
            data[bound.html_name] = "on" if value is True else str(value)

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        add(inline.formset.management_form)
        for form in inline.formset.forms:
            add(form)
    return data


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


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


# --- plans, versions, prices and the audit trail ------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("model", "tiers", "error"),
    [
        ("graduated", [("1000", "0.10"), ("5000", "0.05")], "the last tier must be unbounded"),
        ("volume", [], "tiered prices need at least one tier"),
        ("graduated", [("0", "0.10"), ("", "0.05")], "tier up_to must be"),
        ("volume", [("", "0.10"), ("", "0.05")], "only the last tier may be unbounded"),
        ("per_unit", [("", "0.01")], "per_unit prices take no tiers"),
    ],
)
def test_a_price_the_pricing_engine_would_refuse_is_not_saved(staff_client, plan, model, tiers, error):
    version = plan.versions.get()
    url = reverse("admin:billing_price_add")
    data = form_data(staff_client.get(url))
    data.update(
        {
            "version": str(version.pk),
            "meter": "tts_audio_seconds",
            "provider": "ElevenLabs",
            "price_model": model,
            "unit_size": "1000",
        }
    )
    data["tiers-TOTAL_FORMS"] = str(len(tiers))
    for i, (up_to, amount) in enumerate(tiers):
        data.update(
            {f"tiers-{i}-up_to": up_to, f"tiers-{i}-unit_amount": amount, f"tiers-{i}-flat_amount": "0"}
        )
    prices_before = Price.objects.count()

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert Price.objects.count() == prices_before
    assert not PlanAuditEntry.objects.exists()


def test_two_prices_on_the_same_scope_in_another_case_are_refused(staff_client, plan):
    version = plan.versions.get()
    url = reverse("admin:billing_price_add")
    data = form_data(staff_client.get(url))
    data.update(
        {"version": str(version.pk), "meter": "stt_audio_seconds", "provider": "deepgram", "unit_size": "60"}
    )

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert "two prices target the same meter" in response.content.decode()


def test_a_valid_tiered_price_is_saved_with_its_tiers_and_audited(staff_client, staff, plan):
    version = plan.versions.get()
    url = reverse("admin:billing_price_add")
    data = form_data(staff_client.get(url))
    data.update(
        {
            "version": str(version.pk),
            "meter": "tts_audio_seconds",
            "provider": "ElevenLabs",
            "price_model": "volume",
            "unit_size": "60",
            "tiers-TOTAL_FORMS": "2",
            "tiers-0-up_to": "",
            "tiers-0-unit_amount": "0.01",
            "tiers-0-flat_amount": "0",
            "tiers-1-up_to": "600",
            "tiers-1-unit_amount": "0.02",
            "tiers-1-flat_amount": "0",
        }
    )

    response = staff_client.post(url, data)

    assert response.status_code == 302
    price = Price.objects.get(version=version, provider="ElevenLabs")
    assert [t.up_to for t in price.tiers.all()] == [Decimal(600), None]
    assert PlanAuditEntry.objects.filter(plan=plan, action="added").count() == 3  # the price and two tiers


def test_a_graduated_price_without_tiers_cannot_be_added_from_the_version_page(staff_client, plan):
    version = plan.versions.get()
    url = reverse("admin:billing_planversion_change", args=[version.pk])
    data = form_data(staff_client.get(url))
    n = int(data["prices-TOTAL_FORMS"])
    data["prices-TOTAL_FORMS"] = str(n + 1)
    data.update(
        {
            f"prices-{n}-meter": "tts_audio_seconds",
            f"prices-{n}-provider": "ElevenLabs",
            f"prices-{n}-price_model": "graduated",
            f"prices-{n}-unit_amount": "0",
            f"prices-{n}-unit_size": "1",
            f"prices-{n}-package_size": "1",
            f"prices-{n}-package_amount": "0",
            f"prices-{n}-markup": "0",
            f"prices-{n}-free_allowance": "0",
            f"prices-{n}-minimum_charge": "0",
        }
    )

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert "graduated prices need tiers" in response.content.decode()
    assert not version.prices.filter(provider="ElevenLabs").exists()


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


# --- locked versions ------------------------------------------------------------------------------------------


@pytest.fixture
def locked_version(draft, plan):
    invoicing.finalize_invoice(draft.pk, force=True)
    version = plan.versions.get()
    assert version.is_locked
    return version


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


# --- subscriptions on the tenant page --------------------------------------------------------------------------


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


# --- invoices -------------------------------------------------------------------------------------------------


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


# --- the invoice preview ------------------------------------------------------------------------------------


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


# --- every page renders -----------------------------------------------------------------------------------------


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
