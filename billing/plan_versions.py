"""Changing what a plan charges without touching what was already invoiced (DESIGN §5).

A finalized invoice keeps the plan version it used (``PlanVersion.is_locked``). Late usage of a finalized
period is re-priced under the versions in force then, so a version that starts inside a finalized period
would re-bill it through adjustment lines: new versions start after the last finalized period instead.
"""

from __future__ import annotations

from datetime import date

from django.db import transaction
from django.db.models import Max

from billing.models import Invoice, InvoiceLine, PlanVersion, PricePlan


def next_version_number(plan: PricePlan) -> int:
    return (plan.versions.aggregate(last=Max("version"))["last"] or 0) + 1


def first_open_day(plan: PricePlan) -> date | None:
    """The first day a new version of ``plan`` may start: the end of the last period invoiced under it
    (``None`` when no finalized invoice used the plan)."""
    return (
        InvoiceLine.objects.filter(plan_version__plan=plan)
        .exclude(invoice__status=Invoice.Status.DRAFT)
        .aggregate(end=Max("segment_end"))["end"]
    )


def check_start(plan: PricePlan, effective_from: date) -> None:
    """Refuse a version start inside a period already finalized under the plan."""
    first = first_open_day(plan)
    if first is not None and effective_from < first:
        raise ValueError(
            f"Periods before {first} are invoiced under this plan and keep their versions: "
            f"a version must start on or after {first}."
        )


def copy_version(source: PlanVersion, effective_from: date) -> PlanVersion:
    """A new version of the source's plan, numbered after the last one, with the source's fees, prices and
    tiers, in force from ``effective_from``. Raises ValueError when that date cannot take a version."""
    with transaction.atomic():
        plan = PricePlan.objects.select_for_update().get(pk=source.plan_id)  # one numbering at a time
        check_start(plan, effective_from)
        if plan.versions.filter(effective_from=effective_from).exists():
            raise ValueError(f"{plan.name} already has a version starting on {effective_from}.")
        version = PlanVersion.objects.create(
            plan=plan,
            version=next_version_number(plan),
            effective_from=effective_from,
            base_fee=source.base_fee,
            fee_per_active_agent=source.fee_per_active_agent,
        )
        for price in source.prices.prefetch_related("tiers"):
            tiers = list(price.tiers.all())
            price.pk = None
            price._state.adding = True
            price.version = version
            price.save()
            for tier in tiers:
                tier.pk = None
                tier._state.adding = True
                tier.price = price
                tier.save()
    return version
