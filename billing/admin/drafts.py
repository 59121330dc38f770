"""Drafts follow admin edits: a change to a plan (its versions, prices, tiers) or to a tenant's subscriptions
queues a refresh of the drafts it may move once the edit has committed, so the draft invoice and the
portal's dashboard agree right away rather than after the next beat refresh (docs/decisions/012).

The tasks call ``billing.invoicing.refresh_drafts_for``. The refresh is queued with ``robust`` on-commit:
if the broker cannot take it, the edit stands and the beat refresh (every 15 minutes) catches up.
"""

from __future__ import annotations

from django.db import transaction

from billing import audit, tasks
from billing.models import PlanVersion, Price, PricePlan, PriceTier


def refresh_plan_drafts_after_commit(plan_id: int) -> None:
    transaction.on_commit(lambda: tasks.refresh_plan_drafts.delay(plan_id), robust=True)


def refresh_tenant_drafts_after_commit(tenant_id: int) -> None:
    transaction.on_commit(lambda: tasks.refresh_tenant_drafts.delay(tenant_id), robust=True)


class PlanEditRefreshesDrafts:
    """For the pages of plans, versions, prices and tiers: every save or delete refreshes the drafts of the
    tenants on the plan."""

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        refresh_plan_drafts_after_commit(audit.plan_of(form.instance).pk)

    def delete_model(self, request, obj: PricePlan | PlanVersion | Price | PriceTier):
        plan_id = audit.plan_of(obj).pk
        super().delete_model(request, obj)
        refresh_plan_drafts_after_commit(plan_id)

    def delete_queryset(self, request, queryset):
        plan_ids = {audit.plan_of(obj).pk for obj in queryset}
        super().delete_queryset(request, queryset)
        for plan_id in sorted(plan_ids):
            refresh_plan_drafts_after_commit(plan_id)
