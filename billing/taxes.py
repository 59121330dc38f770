"""Taxes (issue 16 part 4, decision 019): which rate an invoice of a tenant carries, and tax ids.

The rate follows the buyer (DESIGN §14; for digital services sold to consumers the EU taxes where the customer
is): the staff-defined ``TaxRate`` of the billing profile's country and region (else the whole country) in force
on the period's first day. An EU business buying from a seller established in another EU state, with a tax id
that python-stdnum accepts, is reverse-charged: the invoice carries no tax and says the customer accounts for
it (Article 196 of Council Directive 2006/112/EC). No billing profile, or no rate for the country: no tax line.
How much: billing.settlement, on the discounted amount, once per invoice.

Under Stripe Tax (``STRIPE_TAX_ENABLED``, billing.tax_calculation) staff rates and reverse charge are not used:
finalization takes Stripe's amount, and drafts estimate with the effective rate Stripe returned last for the
tenant; before any, a zero tax line says the tax is computed at finalization.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.conf import settings
from stdnum import get_cc_module
from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError as StdnumError

from billing import settlement, tax_calculation
from billing.models import BillingProfile, TaxRate
from tenants.models import Tenant

EU = frozenset(code.upper() for code in eu_vat.MEMBER_STATES if code != "xi") | {"GR"}
REVERSE_CHARGE_NOTE = (
    "VAT reverse charge: the customer accounts for the VAT (Article 196 of Council Directive 2006/112/EC)"
)


class TaxIdError(ValueError):
    """A tax id python-stdnum does not accept for the country."""


def check_tax_id(country: str, tax_id: str) -> str:
    """The tax id in compact form, checked for the country (EU VAT numbers by ``stdnum.eu.vat``, which also
    checks the country prefix; other countries by their ``vat`` module when python-stdnum has one)."""
    country, tax_id = country.upper(), tax_id.strip()
    if not tax_id:
        return ""
    if country in EU or country == "EL":
        try:
            compact = eu_vat.validate(tax_id)
        except StdnumError as error:
            raise TaxIdError(f"not a valid EU VAT number: {error}") from None
        prefix = compact[:2].upper()
        if {"EL": "GR"}.get(prefix, prefix) != country:
            raise TaxIdError(f"a {prefix} VAT number, but the country is {country}")
        return compact
    module = get_cc_module(country.lower(), "vat")
    if module is None:
        return tax_id  # no check python-stdnum knows for this country: kept as given
    try:
        return module.validate(tax_id)
    except StdnumError as error:
        raise TaxIdError(f"not a valid {country} tax number: {error}") from None


def reverse_charged(profile: BillingProfile) -> bool:
    seller = (settings.SELLER_COUNTRY or "").upper()
    buyer = profile.country.upper()
    if not (profile.is_business and profile.tax_id and seller in EU and buyer in EU and buyer != seller):
        return False
    try:
        check_tax_id(buyer, profile.tax_id)
    except TaxIdError:
        return False
    return True


def tax_for(tenant: Tenant, period_start: date) -> settlement.Tax | None:
    profile = BillingProfile.objects.filter(tenant=tenant).first()
    rates = TaxRate.objects.filter(country=profile.country.upper()) if profile is not None else []
    return tax_from(profile, rates, period_start)


def tax_rates(countries: set[str]) -> list[TaxRate]:
    """Every rate of these countries (a batch of invoices reads them once and picks with :func:`tax_from`)."""
    return list(TaxRate.objects.filter(country__in={c.upper() for c in countries}))


def tax_from(profile: BillingProfile | None, rates, period_start: date) -> settlement.Tax | None:
    """The tax of an invoice for ``profile``'s buyer whose period starts ``period_start``, from ``rates`` (at
    least those of the profile's country): the region's rate in force, else the whole country's."""
    if profile is None:
        return None
    if tax_calculation.is_enabled():
        return _stripe_tax_estimate(profile)
    if reverse_charged(profile):
        return settlement.Tax(REVERSE_CHARGE_NOTE, rate=0, reverse_charge=True)
    in_force = sorted(
        (
            r
            for r in rates
            if r.country == profile.country.upper()
            and r.effective_from <= period_start
            and (r.effective_to is None or r.effective_to > period_start)
        ),
        key=lambda r: (r.region, -r.effective_from.toordinal()),  # TaxRate's ordering, as .first() took it
    )
    region = profile.region.upper()
    rate = next((r for r in in_force if region and r.region.upper() == region), None) or next(
        (r for r in in_force if r.region == ""), None
    )
    if rate is None:
        return None
    label = f"{rate.name} {rate.percent.normalize():f} %" + (" (included)" if rate.inclusive else "")
    return settlement.Tax(label, rate.percent / 100, inclusive=rate.inclusive)


def _stripe_tax_estimate(profile: BillingProfile) -> settlement.Tax:
    percent = profile.stripe_tax_percent
    if percent is None:
        return settlement.Tax("Tax: computed by Stripe Tax when the invoice is finalized", rate=Decimal(0))
    label = f"Tax: estimated at {percent.normalize():f} % (Stripe Tax's last rate), computed at finalization"
    return settlement.Tax(label, percent / 100)


def parties(tenant: Tenant) -> dict:
    """Seller and buyer as an invoice names them (settings SELLER_*, the tenant's billing profile); frozen on
    the invoice at finalization."""
    profile = BillingProfile.objects.filter(tenant=tenant).first()
    buyer: dict = {"name": tenant.name, "email": tenant.billing_email}
    if profile is not None:
        address = [
            profile.address_line1,
            profile.address_line2,
            f"{profile.postal_code} {profile.city}".strip(),
        ]
        buyer.update(
            legal_name=profile.legal_name,
            address=[part for part in [*address, profile.region] if part],
            country=profile.country,
            tax_id=profile.tax_id,
        )
    return {
        "seller": {
            "name": settings.SELLER_NAME,
            "address": [part.strip() for part in settings.SELLER_ADDRESS.split(";") if part.strip()],
            "country": settings.SELLER_COUNTRY,
            "tax_id": settings.SELLER_TAX_ID,
        },
        "buyer": buyer,
    }
