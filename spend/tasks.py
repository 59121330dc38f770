"""Celery tasks of spend control: thin wrappers around spend.control and spend.budgets, called with ids.

A tenant's spend is checked (budgets, balance alerts, auto-recharge: spend.control.check) a couple of seconds
after an ingest batch, an authorization or a credit, and by the beat every five minutes for whatever changes with
time alone (credit expiring, a missed trigger). :func:`queue_check` sends at most one delayed check per tenant
every SPEND_CHECK_DELAY_SECONDS (2) — per process by a dict, across processes by ``cache.add`` when the cache
is shared (Redis in production) — so a burst of batches costs one check, which runs that long after the burst's
first and sees everything committed by then; a batch that commits just after it is caught by the next trigger
or the beat.
"""

import logging
import time

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q

from spend import control
from spend.models import SpendPolicy
from tenants.models import Tenant
from usage.changes import UsageChange

logger = logging.getLogger(__name__)

WATCHED_TTL = 30.0  # seconds a process remembers whether a tenant has a budget or a prepaid policy

_watched: dict[int, tuple[float, bool]] = {}  # tenant id → (until, watched)
_queued: dict[int, float] = {}  # tenant id → when this process last queued its check


@shared_task(acks_late=True)
def check_spend() -> int:
    """Beat (every five minutes): queue a check of every active tenant with a budget or a prepaid policy.
    Returns how many."""
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
    """After this transaction commits, check the tenant's spend check_delay() seconds later, unless one was
    queued within that window (it runs after this commit). Cheap when the tenant has nothing to check:
    the answer is remembered for WATCHED_TTL."""
    now, delay = time.monotonic(), check_delay()
    until, watched = _watched.get(tenant.pk, (0.0, False))
    if until < now:
        watched = control.watched(tenant)
        _watched[tenant.pk] = (now + WATCHED_TTL, watched)
    if not watched or (delay > 0 and now - _queued.get(tenant.pk, -delay - 1) < delay):
        return
    _queued[tenant.pk] = now
    tenant_id = tenant.pk
    transaction.on_commit(lambda: _send(tenant_id))


def check_delay() -> float:
    """Seconds a queued check waits (and the debounce window): settings.SPEND_CHECK_DELAY_SECONDS."""
    return float(settings.SPEND_CHECK_DELAY_SECONDS)


def _send(tenant_id: int) -> None:
    delay = check_delay()
    try:
        if delay > 0 and not cache.add(f"meterline:spend-check:{tenant_id}", 1, timeout=delay):
            return  # another process queued this tenant's check within the window
        check_tenant_spend.apply_async((tenant_id,), countdown=delay)
    except Exception:  # the broker or cache is down: the beat checks later; never fail the request
        logger.warning("could not queue the spend check of tenant %s", tenant_id, exc_info=True)


def after_ingest(tenant: Tenant, agent, change: UsageChange) -> dict:
    """The usage hook: a stored batch may cross a budget threshold or bring the balance low; a correction may
    bring it back up (a recovery is recorded silently, so the next fall is announced again)."""
    if change:
        queue_check(tenant)
    return {}


def after_event(event) -> None:
    """Outbox subscriber (credit granted, top-up paid): the balance rose; record its state again."""
    tenant = Tenant.objects.filter(pk=event.tenant_id).first()
    if tenant is not None:
        _watched.pop(tenant.pk, None)
        _queued.pop(tenant.pk, None)
        queue_check(tenant)
