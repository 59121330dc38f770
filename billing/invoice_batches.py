"""Invoicing many tenants at once (issue 13 part 6, decision 026): the monthly run as batches of tenants.

billing.tasks fans the run out as one Celery task per batch of :data:`BATCH_SIZE` tenants. A batch reads what
pricing needs once for all its tenants — subscriptions, plan versions, prices, tiers, provider rates, coupons,
billing profiles and tax rates (billing.period_pricing.load_inputs) and every tenant's usage of the period in
one statement (usage.rollups.windows_usage) — and then writes each tenant's invoice through billing.invoicing,
in the tenant's own transaction under the invoice's row lock, exactly as the per-tenant path does. So a batch
run twice, or again after a worker died half-way, doubles nothing (a finalized invoice is returned untouched, a
draft is rewritten whole), and a tenant that fails rolls back only its own invoice: it is logged, reported,
and retried on its own while the batch's other tenants go on.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from billing import invoicing, periods
from billing.models import Invoice
from billing.period_pricing import (
    PricedPeriod,
    load_inputs,
    price_loaded,
    price_period,
    usage_windows,
)
from tenants.models import Tenant
from usage import rollups

logger = logging.getLogger(__name__)

# Tenants per task. Reading the catalogue and the usage costs a batch about ten statements whatever its size,
# against roughly ten per tenant for its invoices, so 50 makes that overhead small; and 1,000 tenants still
# make 20 tasks, enough to keep every worker process busy to the end and to make a retried batch cheap.
BATCH_SIZE = 50


class BatchPricer:
    """billing.invoicing's pricer for a batch: each tenant's period priced from what the batch read ahead.
    Anything else (an earlier period re-priced for late usage, a tenant whose time zone or currency changed
    since, or whose data could not be read ahead) is priced as :func:`price_period` prices it."""

    def __init__(self, tenants: list[Tenant], start: date, end: date) -> None:
        self.start, self.end = start, end
        self.inputs = load_inputs(tenants, start, end)
        self.read_as: dict[int, tuple[str, str]] = {}
        windows = []
        for tenant in tenants:
            try:
                spans = usage_windows(tenant, start, end, self.inputs[tenant.pk])
            except Exception as error:  # e.g. an unknown time zone: the tenant fails on its own, reported
                logger.warning("tenant %s: not read ahead (%r); priced on its own", tenant.pk, error)
                continue
            self.read_as[tenant.pk] = (tenant.timezone, tenant.currency)
            windows += [(tenant.pk, begin, finish) for begin, finish in spans]
        self.usage = rollups.windows_usage(windows)

    def __call__(self, tenant: Tenant, start: date, end: date) -> PricedPeriod:
        if (start, end) != (self.start, self.end) or self.read_as.get(tenant.pk) != (
            tenant.timezone,
            tenant.currency,
        ):
            return price_period(tenant, start, end)
        return price_loaded(
            tenant,
            start,
            end,
            self.inputs[tenant.pk],
            lambda begin, finish: self.usage[(tenant.pk, begin, finish)],
        )


@dataclass
class BatchOutcome:
    """What a batch did: the invoices it wrote (drafts, or finalized with ``finalize``) and the tenants whose
    invoice failed (the error is logged with the tenant; nothing of theirs was written)."""

    invoices: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"invoices": len(self.invoices), "failed": self.failed}


def invoice_batch(
    period_start: date,
    tenant_ids: list[int],
    *,
    finalize: bool = False,
    force: bool = False,
    now: datetime | None = None,
) -> BatchOutcome:
    """Generate the period's draft of each tenant, and with ``finalize`` finalize it (``force``: before the
    grace period, as the admin's "finalize now"). An existing draft is finalized directly, its lines written
    once. Idempotent, tenant by tenant."""
    start = periods.month_start(period_start)
    end = periods.next_month(start)
    tenants = list(Tenant.objects.filter(pk__in=tenant_ids).order_by("pk"))
    try:
        pricer = BatchPricer(tenants, start, end)
    except Exception:  # bad data shared by the batch (a price the engine refuses): each tenant on its own
        logger.exception(
            "reading ahead for %s tenants' %s failed; pricing them one by one", len(tenants), start
        )
        pricer = price_period
    drafts = dict(
        Invoice.objects.filter(tenant_id__in=tenant_ids, period_start=start).values_list("tenant_id", "pk")
    )
    outcome = BatchOutcome()
    for tenant in tenants:
        try:
            invoice_id = drafts.get(tenant.pk)
            if invoice_id is None or not finalize:
                invoice_id = invoicing.generate_invoice(tenant.pk, start, pricer=pricer).pk
            if finalize:
                invoicing.finalize_invoice(invoice_id, now=now, force=force, pricer=pricer)
        except Exception:
            logger.exception("invoicing %s for tenant %s failed", start, tenant.pk)
            outcome.failed.append(tenant.pk)
        else:
            outcome.invoices.append(invoice_id)
    return outcome


def batches(pairs: Iterable[tuple[int, date]], size: int | None = None) -> list[tuple[date, list[int]]]:
    """(tenant, period) pairs as (period, tenant ids) batches of at most ``size`` (:data:`BATCH_SIZE`) tenants,
    in tenant order."""
    size = size or BATCH_SIZE
    by_period: dict[date, list[int]] = defaultdict(list)
    for tenant_id, period_start in pairs:
        by_period[period_start].append(tenant_id)
    return [
        (period_start, ids[i : i + size])
        for period_start, tenant_ids in sorted(by_period.items())
        for ids in [sorted(set(tenant_ids))]
        for i in range(0, len(ids), size)
    ]
