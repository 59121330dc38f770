"""Changing a tenant's subscriptions without touching what was already invoiced (DESIGN §5).

Late usage of a finalized period is re-priced under the subscriptions of that period; changing them would
re-bill it through adjustment lines, so changes take effect after the last finalized period. (The same rule
for plan versions is in ``billing.plan_versions``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

from django.db.models import Max

from billing.models import Invoice, Subscription
from tenants.models import Tenant


@dataclass(frozen=True)
class SubscriptionEdit:
    """One row of an edit to a tenant's subscriptions, as a form submits it."""

    subscription_id: int | None  # the stored subscription the row edits; None for a new row
    is_deleted: bool = False
    values: Mapping[str, object] = field(
        default_factory=dict
    )  # the row's cleaned values; empty if left blank
    changed: frozenset[str] = frozenset()  # the names of the fields the row changes


def replaced_ends(edits: Iterable[SubscriptionEdit]) -> dict[int, date]:
    """Switching plans is one edit: a new subscription that starts after a stored open-ended one (no end,
    and its end not edited in the same change) ends that one the day the new one starts. Returns
    ``{subscription id: its new end}``; the edit then goes through the same checks as one typed in
    (no overlaps, nothing invoiced changes: ``invoiced_changes``)."""
    live = [e for e in edits if e.values and not e.is_deleted]
    new_starts = sorted(
        e.values["starts_on"] for e in live if e.subscription_id is None and e.values.get("starts_on")
    )
    ends = {}
    for edit in live:
        start = edit.values.get("starts_on")
        if edit.subscription_id is None or start is None or edit.values.get("ends_on") is not None:
            continue
        if "ends_on" in edit.changed:
            continue  # the person cleared the end on purpose
        later = [day for day in new_starts if day > start]
        if later:
            ends[edit.subscription_id] = later[0]
    return ends


def first_open_day(tenant: Tenant) -> date | None:
    """The first day the tenant's subscriptions may change: the end of its last finalized period (``None``
    when nothing is finalized yet, or the tenant is not saved)."""
    if tenant.pk is None:
        return None
    invoiced = Invoice.objects.for_tenant(tenant).finalized()
    return invoiced.aggregate(end=Max("period_end"))["end"]


def invoiced_changes(tenant: Tenant, edits: Iterable[SubscriptionEdit]) -> list[str]:
    """Why the edits cannot be saved, one message per refused change; empty when none touches an invoiced
    period.

    Refused: deleting a subscription that started in an invoiced period, adding one that starts there,
    changing the plan or start of one whose old or new start lies there, and changing the end of one whose
    old or new end lies there. Rows marked deleted that were never stored count as new rows.
    """
    first_open = first_open_day(tenant)
    if first_open is None:
        return []

    def touches_invoiced(day: date | None) -> bool:
        return day is not None and day < first_open

    rule = f"periods before {first_open} are invoiced: changes take effect on or after {first_open}"
    stored = {s.pk: s for s in Subscription.objects.for_tenant(tenant).select_related("plan")}
    problems = []
    for edit in edits:
        before = stored.get(edit.subscription_id)
        if before is not None and edit.is_deleted:
            if touches_invoiced(before.starts_on):
                problems.append(f"{before} cannot be deleted: {rule}.")
            continue
        if not edit.values or not edit.changed:
            continue
        data, changed = edit.values, edit.changed
        if before is None:
            if touches_invoiced(data.get("starts_on")):
                problems.append(f"A subscription cannot start on {data['starts_on']}: {rule}.")
            continue
        if changed & {"plan", "starts_on"} and (
            touches_invoiced(before.starts_on) or touches_invoiced(data.get("starts_on"))
        ):
            problems.append(f"{before} cannot change its plan or start: {rule}.")
        if "ends_on" in changed and (
            touches_invoiced(before.ends_on) or touches_invoiced(data.get("ends_on"))
        ):
            problems.append(f"{before} cannot end on {data.get('ends_on') or 'no date'}: {rule}.")
    return problems
