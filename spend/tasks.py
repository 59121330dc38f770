"""Celery tasks of spend control: thin wrappers around spend.control and spend.budgets, called with ids.

A tenant's spend is checked (budgets, balance alerts, auto-recharge: spend.control.check) by the beat every
minute and, sooner, a couple of seconds after an ingest batch or an authorization: :func:`queue_check` sends
one delayed check per tenant and process at most every CHECK_DELAY, so a burst of batches costs one check,
which runs after the burst's first CHECK_DELAY and sees everything committed by then; the beat catches the rest.
"""

import logging
import time

from celery import shared_task
from django.db import transaction
from django.db.models import Q

from spend import control
from spend.models import SpendPolicy
from tenants.models import Tenant

logger = logging.getLogger(__name__)

CHECK_DELAY = (
    2.0  # seconds: a check queued by ingest runs this long after it, covering the batches in between
)
WATCHED_TTL = 30.0  # seconds a process remembers whether a tenant has a budget or a prepaid policy

_watched: dict[int, tuple[float, bool]] = {}  # tenant id → (until, watched)
_queued: dict[int, float] = {}  # tenant id → when this process last queued its check


@shared_task(acks_late=True)
def check_spend() -> int:
    """Beat: queue a check of every active tenant with a budget or a prepaid policy. Returns how many."""
    prepaid = Q(spend_policy__isnull=False) & ~Q(spend_policy__policy=SpendPolicy.Policy.POSTPAID)
    ids = list(
        Tenant.objects.filter(status="active")
        .filter(prepaid | Q(budget__isnull=False))
        .values_list("pk", flat=True)
        .distinct()
    )
    for tenant_id in ids:
        check_tenant_spend.delay(tenant_id)
    return len(ids)


@shared_task(acks_late=True)
def check_tenant_spend(tenant_id: int) -> dict:
    """One tenant's budgets, balance alerts and auto-recharge (idempotent: alerts and recharges go out once)."""
    tenant = Tenant.objects.filter(pk=tenant_id, status="active").first()
    if tenant is None:
        return {}
    checked = control.check(tenant)
    return {
        "budget_alerts": checked.budget_alerts,
        "balance_state": checked.balance_state,
        "recharge": checked.recharge,
    }


# The name the beat used before spend control took budgets over: a message queued before the upgrade still runs.
check_budgets = shared_task(name="spend.tasks.check_budgets", acks_late=True)(check_spend.run)


def queue_check(tenant: Tenant) -> None:
    """After this transaction commits, check the tenant's spend CHECK_DELAY seconds later, unless this process
    queued one within CHECK_DELAY (that one runs after this commit). Cheap when the tenant has nothing to check:
    the answer is remembered for WATCHED_TTL."""
    now = time.monotonic()
    until, watched = _watched.get(tenant.pk, (0.0, False))
    if until < now:
        watched = control.watched(tenant)
        _watched[tenant.pk] = (now + WATCHED_TTL, watched)
    if not watched or now - _queued.get(tenant.pk, -CHECK_DELAY - 1) < CHECK_DELAY:
        return
    _queued[tenant.pk] = now
    tenant_id = tenant.pk
    transaction.on_commit(lambda: _send(tenant_id))


def _send(tenant_id: int) -> None:
    try:
        check_tenant_spend.apply_async((tenant_id,), countdown=CHECK_DELAY)
    except Exception:  # the broker is down: the beat checks within a minute; never fail the request
        logger.warning("could not queue the spend check of tenant %s", tenant_id, exc_info=True)


def after_ingest(tenant: Tenant, agent, records) -> dict:
    """Ingest's stored hook: a stored batch may cross a budget threshold or bring the balance low."""
    if records:
        queue_check(tenant)
    return {}


def after_event(event) -> None:
    """Outbox subscriber (credit granted, top-up paid): the balance rose; record its state again."""
    tenant = Tenant.objects.filter(pk=event.tenant_id).first()
    if tenant is not None:
        _watched.pop(tenant.pk, None)
        _queued.pop(tenant.pk, None)
        queue_check(tenant)
