"""Discounts (issue 16 part 3, decision 019): which coupons apply to a tenant's period, and applying a coupon to a
tenant under its rules. What a discount takes is billing.settlement's (the order of operations); the lines
are made by billing.period_pricing, so an invoice, its draft and the prepaid balance all see them.

A coupon discounts the lines of the period it applies to (fees, usage, minimums — or, when limited, the usage
lines of its meters or models), never late-usage adjustments of earlier periods: those are priced with the
earlier period's own discounts (billing.late_usage re-prices that period, discounts included).
"""

from __future__ import annotations

from datetime import date, datetime

from django.db import transaction
from django.utils import timezone

from billing import periods, settlement
from billing.models import AppliedCoupon, Coupon
from tenants.models import Tenant

DISCOUNTABLE_KINDS = frozenset({"base_fee", "agent_fee", "usage", "minimum"})


class CouponError(ValueError):
    """A coupon that cannot be applied (expired, used up, another currency, already applied); nothing changed."""


def in_force(tenant: Tenant, period_start: date) -> list[Coupon]:
    """The tenant's coupons that discount the period starting ``period_start``, oldest applied first."""
    return in_force_of(applied_coupons([tenant.pk]).get(tenant.pk, []), period_start)


def applied_coupons(tenant_ids: list[int]) -> dict[int, list[AppliedCoupon]]:
    """The tenants' applied coupons with their coupons, oldest applied first, in one query (a batch of
    invoices reads them once)."""
    found: dict[int, list[AppliedCoupon]] = {}
    for applied in (
        AppliedCoupon.objects.filter(tenant_id__in=tenant_ids)
        .select_related("coupon")
        .order_by("starts_on", "id")
    ):
        found.setdefault(applied.tenant_id, []).append(applied)
    return found


def in_force_of(applied: list[AppliedCoupon], period_start: date) -> list[Coupon]:
    """Of a tenant's applied coupons (oldest first), those that discount the period starting ``period_start``."""
    found = []
    for each in applied:
        coupon, first = each.coupon, periods.month_start(each.starts_on)
        if period_start < first:
            continue
        index = periods.months_between(first, period_start)
        if coupon.duration == Coupon.Duration.ONCE and index > 0:
            continue
        if coupon.duration == Coupon.Duration.REPEATING and index >= (coupon.duration_periods or 0):
            continue
        found.append(coupon)
    return found


def as_discount(coupon: Coupon, currency: str) -> settlement.Discount | None:
    """The coupon's effect on an invoice in ``currency`` (None: a fixed amount in another currency)."""
    if coupon.amount_off is not None and coupon.currency.upper() != currency.upper():
        return None
    meters, models = frozenset(coupon.meters or ()), frozenset(coupon.models_only or ())

    def applies_to(group: tuple) -> bool:
        kind, meter, _provider, model = group[:4]
        if kind not in DISCOUNTABLE_KINDS:
            return False
        if meters and meter not in meters:
            return False
        return not (models and model not in models)

    return settlement.Discount(
        coupon.name, percent=coupon.percent_off, amount=coupon.amount_off, applies_to=applies_to
    )


@transaction.atomic
def apply(
    tenant: Tenant, coupon: Coupon, starts_on: date, *, by=None, now: datetime | None = None
) -> AppliedCoupon:
    """Apply a coupon to a tenant from a period on, under its rules (checked with the coupon's row locked, so
    its redemption limit holds under concurrent admins)."""
    coupon = Coupon.objects.select_for_update().get(pk=coupon.pk)
    check(tenant, coupon, now)
    return AppliedCoupon.objects.create(
        tenant=tenant, coupon=coupon, starts_on=periods.month_start(starts_on), created_by=by
    )


def check(tenant: Tenant, coupon: Coupon, now: datetime | None = None) -> None:
    """The rules a coupon must meet to be applied to a tenant (CouponError naming the first it breaks); the
    admin's form asks first for a clear message, :func:`apply` again under the coupon's lock."""
    now = now or timezone.now()
    if coupon.redeem_by is not None and now > coupon.redeem_by:
        raise CouponError(f"coupon {coupon.code} could be applied until {coupon.redeem_by:%Y-%m-%d %H:%M}")
    if coupon.max_redemptions is not None and coupon.redemptions.count() >= coupon.max_redemptions:
        raise CouponError(f"coupon {coupon.code} has been applied {coupon.max_redemptions} times already")
    if coupon.amount_off is not None and coupon.currency.upper() != tenant.currency.upper():
        raise CouponError(
            f"coupon {coupon.code} is in {coupon.currency}; the tenant is billed in {tenant.currency}"
        )
    if AppliedCoupon.objects.filter(tenant=tenant, coupon=coupon).exists():
        raise CouponError(f"coupon {coupon.code} is already applied to {tenant}")
