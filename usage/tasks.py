"""Celery tasks of the usage app: thin wrappers that call a service with ids."""

from celery import shared_task
from django.utils import timezone

from observability import metrics
from tenants.models import Tenant
from usage import archive, partitions, rollups


@shared_task(acks_late=True)
def verify_rollups(tenant_id: int) -> list[dict]:
    """Recompute a tenant's rollups from its raw events and return every group where they differ
    (usage.rollups.rollup_drift).

    An empty list is the expected answer; anything else means a bug and is worth an alert. The drift is only
    returned (into the result backend and the worker's "succeeded" log line) and counted in the
    ``meterline_rollup_drift_groups_total`` metric, which is what to alert on; nothing repairs it here —
    rebuilding a rollup is an operator action (docs/operations.md).
    """
    drift = rollups.rollup_drift(tenant_id)
    metrics.record_rollup_check(drift)
    return drift


@shared_task(acks_late=True)
def verify_all_rollups() -> int:
    """Beat: queue ``verify_rollups`` for every tenant; returns how many were queued."""
    tenant_ids = list(Tenant.objects.order_by("pk").values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        verify_rollups.delay(tenant_id)
    return len(tenant_ids)


@shared_task(acks_late=True)
def create_event_partitions() -> list[str]:
    """Beat, daily: the events table's partitions of the correction window and of the months ahead
    (usage.partitions); returns the names created (usually none, one at the turn of a month)."""
    return partitions.ensure_partitions(timezone.now())


@shared_task(acks_late=True)
def archive_old_events() -> list[str]:
    """Beat, daily: export, check and drop the months of raw events past the retention (usage.archive); returns
    the months archived (YYYY-MM)."""
    return archive.archive_due(timezone.now())
