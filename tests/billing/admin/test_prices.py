"""Prices and tiers in the admin are checked by the pricing engine: what it would refuse is not saved."""

from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import PlanAuditEntry, Price
from tests.billing.admin.pages import add_inline_row, form_data

pytestmark = pytest.mark.django_db

PRICE_ROW_DEFAULTS = {
    "unit_amount": "0",
    "unit_size": "1",
    "package_size": "1",
    "package_amount": "0",
    "markup": "0",
    "free_allowance": "0",
    "minimum_charge": "0",
}


def price_page_data(client, version, **values) -> dict:
    """The price's own add page, filled in for ``version``."""
    data = form_data(client.get(reverse("admin:billing_price_add")))
    data.update({"version": str(version.pk), **values})
    return data


def version_page_with_new_price(client, version, **values) -> tuple[str, dict]:
    """The version's page with one more price row filled in: ElevenLabs' TTS audio unless ``values`` say
    otherwise."""
    url = reverse("admin:billing_planversion_change", args=[version.pk])
    row = {**PRICE_ROW_DEFAULTS, "meter": "tts_audio_seconds", "provider": "ElevenLabs", **values}
    return url, add_inline_row(form_data(client.get(url)), "prices", row)


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
    data = price_page_data(
        staff_client,
        plan.versions.get(),
        meter="tts_audio_seconds",
        provider="ElevenLabs",
        price_model=model,
        unit_size="1000",
    )
    data["tiers-TOTAL_FORMS"] = str(len(tiers))
    for i, (up_to, amount) in enumerate(tiers):
        data.update(
            {f"tiers-{i}-up_to": up_to, f"tiers-{i}-unit_amount": amount, f"tiers-{i}-flat_amount": "0"}
        )
    prices_before = Price.objects.count()

    response = staff_client.post(reverse("admin:billing_price_add"), data)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert Price.objects.count() == prices_before
    assert not PlanAuditEntry.objects.exists()


def test_two_prices_on_the_same_scope_in_another_case_are_refused(staff_client, plan):
    data = price_page_data(
        staff_client, plan.versions.get(), meter="stt_audio_seconds", provider="deepgram", unit_size="60"
    )

    response = staff_client.post(reverse("admin:billing_price_add"), data)

    assert response.status_code == 200
    assert "two prices target the same meter" in response.content.decode()


def test_a_valid_tiered_price_is_saved_with_its_tiers_and_audited(staff_client, staff, plan):
    version = plan.versions.get()
    data = price_page_data(staff_client, version, meter="tts_audio_seconds", provider="ElevenLabs")
    data.update(
        {
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

    response = staff_client.post(reverse("admin:billing_price_add"), data)

    assert response.status_code == 302
    price = Price.objects.get(version=version, provider="ElevenLabs")
    assert [t.up_to for t in price.tiers.all()] == [Decimal(600), None]
    assert PlanAuditEntry.objects.filter(plan=plan, action="added").count() == 3  # the price and two tiers


@pytest.mark.parametrize("model", ["graduated", "volume"])
@pytest.mark.parametrize(
    ("tiers", "stored"),
    [
        (
            "500:0.10\n*:0.05",
            [(Decimal(500), Decimal("0.10"), Decimal(0)), (None, Decimal("0.05"), Decimal(0))],
        ),
        # any order, ; for a new line, ∞ or inf for the unbounded tier, a flat amount, spaces
        (
            " inf : 0.01 ;1000: 0.02:5 ; 200:0.03",
            [
                (Decimal(200), Decimal("0.03"), Decimal(0)),
                (Decimal(1000), Decimal("0.02"), Decimal(5)),
                (None, Decimal("0.01"), Decimal(0)),
            ],
        ),
        ("∞:0", [(None, Decimal(0), Decimal(0))]),
    ],
)
def test_a_tiered_price_is_added_with_its_tiers_in_one_save_on_the_version_page(
    staff_client, plan, model, tiers, stored
):
    version = plan.versions.get()
    url, data = version_page_with_new_price(
        staff_client, version, price_model=model, unit_size="60", tiers=tiers
    )

    response = staff_client.post(url, data)

    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    price = version.prices.get(provider="ElevenLabs")
    assert price.price_model == model
    assert [(t.up_to, t.unit_amount, t.flat_amount) for t in price.tiers.all()] == stored
    entry = PlanAuditEntry.objects.get(plan=plan, action="added")
    assert entry.changes["tiers"][1] == "\n".join(
        ":".join(
            ["*" if up_to is None else f"{up_to.normalize():f}", f"{unit.normalize():f}"]
            + ([f"{flat.normalize():f}"] if flat else [])
        )
        for up_to, unit, flat in stored
    )


@pytest.mark.parametrize(
    ("model", "tiers", "error"),
    [
        ("graduated", "", "graduated prices need them: enter one a line in the tiers column"),
        ("volume", "100:0.1\n200:0.05", "the last tier must be unbounded"),
        ("graduated", "100:0.1\n100:0.2\n*:0", "tier bounds must increase strictly"),
        ("graduated", "0:0.1\n*:0", "Tier 1 (0:0.1): tier up_to must be &gt; 0"),
        ("graduated", "100:-0.1\n*:0", "Tier 1 (100:-0.1): tier unit_amount must be ≥ 0"),
        ("graduated", "abc:0.1\n*:0", "Tier 1, up_to: Enter a number."),
        (
            "graduated",
            "100:0.0000000000001\n*:0",
            "Tier 1, unit_amount: Ensure that there are no more than 12",
        ),
        ("graduated", "100\n*:0", "Tier 1 (100): write up_to:unit_amount"),
        ("per_unit", "*:0.1", "per_unit prices take no tiers (clear the tiers column)"),
    ],
)
def test_a_refused_row_saves_nothing_and_keeps_every_rows_input(staff_client, plan, model, tiers, error):
    version = plan.versions.get()
    first = version.prices.order_by("pk").first()
    url, data = version_page_with_new_price(staff_client, version, price_model=model, tiers=tiers)
    edited = next(k for k, v in data.items() if k.endswith("-id") and v == str(first.pk)).removesuffix("id")
    data[f"{edited}unit_amount"] = "9.99"
    data = add_inline_row(
        data, "prices", {**PRICE_ROW_DEFAULTS, "meter": "stt_audio_seconds", "provider": "Speechmatics"}
    )
    prices_before = sorted(version.prices.values_list("pk", "unit_amount"))

    response = staff_client.post(url, data)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert sorted(version.prices.values_list("pk", "unit_amount")) == prices_before
    assert not PlanAuditEntry.objects.exists()
    forms = response.context["inline_admin_formsets"][0].formset.forms
    shown = {
        form.prefix: {name: form[name].value() for name in ("provider", "unit_amount", "tiers")}
        for form in forms
    }
    assert shown[edited.rstrip("-")]["unit_amount"] == "9.99"
    assert {"ElevenLabs", "Speechmatics"} <= {row["provider"] for row in shown.values()}
    assert tiers.strip() in {row["tiers"] for row in shown.values()}


def test_tiers_edited_beside_their_price_replace_the_stored_ones(staff_client, plan):
    version = plan.versions.get()
    price = version.prices.get(price_model="graduated")
    url = reverse("admin:billing_planversion_change", args=[version.pk])
    data = form_data(staff_client.get(url))
    row = next(k for k, v in data.items() if k.endswith("-id") and v == str(price.pk)).removesuffix("id")
    assert data[f"{row}tiers"] == "500:0.1\n*:0.05"  # the stored tiers, as entered

    data[f"{row}tiers"] = "1000:0.2\n*:0.1:3"
    assert staff_client.post(url, data).status_code == 302
    assert [(t.up_to, t.unit_amount, t.flat_amount) for t in price.tiers.all()] == [
        (Decimal(1000), Decimal("0.2"), Decimal(0)),
        (None, Decimal("0.1"), Decimal(3)),
    ]

    data = form_data(staff_client.get(url))
    data.update({f"{row}price_model": "per_unit", f"{row}unit_amount": "0.02", f"{row}tiers": ""})
    assert staff_client.post(url, data).status_code == 302
    price.refresh_from_db()
    assert (price.price_model, price.unit_amount, price.tiers.count()) == ("per_unit", Decimal("0.02"), 0)
    changes = [e.changes for e in PlanAuditEntry.objects.filter(plan=plan).order_by("pk")]
    assert changes[0] == {"tiers": ["500:0.1\n*:0.05", "1000:0.2\n*:0.1:3"]}
    assert changes[1]["tiers"] == ["1000:0.2\n*:0.1:3", ""]
