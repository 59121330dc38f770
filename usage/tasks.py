"""Celery tasks of the usage app: thin wrappers that call a service with ids."""

from celery import shared_task

from usage import selectors


@shared_task(acks_late=True)
def verify_rollups(tenant_id: int) -> list[dict]:
    """Recompute a tenant's rollups from its raw events and return every group where they differ.

    An empty list is the expected answer; anything else means a bug and is worth an alert.
    """
    return selectors.rollup_drift(tenant_id)
