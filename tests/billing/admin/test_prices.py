"""Prices and tiers in the admin are checked by the pricing engine: what it would refuse is not saved."""

from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import PlanAuditEntry, Price
from tests.billing.admin.pages import form_data

pytestmark = pytest.mark.django_db


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
