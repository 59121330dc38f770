"""Record what happened, in the caller's transaction, and hand it to subscribers once it has committed.

The domain (billing, spend, usage) calls :func:`record` and knows nothing of who listens. Higher layers
subscribe in their ``AppConfig.ready`` (payments queues the Stripe sync of a finalized invoice; spend delivers
budget alerts), so no import runs upward. Subscribers run after commit in the process that recorded the event;
if that process dies first, or a subscriber raises, the event stays undispatched and the beat task
:func:`dispatch_pending` runs it again. Subscribers are therefore called at least once and must be idempotent
(queueing an idempotent Celery task is the usual body).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from notifications.models import Event

logger = logging.getLogger(__name__)

Subscriber = Callable[[Event], None]
# Subscribe to this to get every event type (tenant webhooks fan every event out to the tenant's endpoints).
ALL = "*"
# Long enough for the on-commit dispatch to have run; the beat sweep takes what is older.
DISPATCH_GRACE = timedelta(minutes=1)

_subscribers: dict[str, list[Subscriber]] = defaultdict(list)


def subscribe(event_type: str, subscriber: Subscriber) -> None:
    """Call ``subscriber(event)`` for every committed event of ``event_type`` (:data:`ALL`: of any type);
    idempotent to register. It runs inside the transaction that marks the event dispatched, so rows it writes
    commit with that mark or not at all."""
    if subscriber not in _subscribers[event_type]:
        _subscribers[event_type].append(subscriber)


def unsubscribe(event_type: str, subscriber: Subscriber) -> None:
    if subscriber in _subscribers[event_type]:
        _subscribers[event_type].remove(subscriber)


def record(tenant_id: int, event_type: str, data: dict[str, Any]) -> Event:
    """Write the event in the current transaction; dispatch it when that commits (never if it rolls back)."""
    event = Event.objects.create(tenant_id=tenant_id, type=event_type, data=data)
    transaction.on_commit(lambda: dispatch(event.pk))
    return event


def dispatch(event_id: int) -> bool:
    """Hand one undispatched event to its subscribers and mark it dispatched, under a row lock so two sweeps
    never run it at once. Returns whether it was dispatched now; a subscriber that raises leaves it for the
    next sweep."""
    try:
        with transaction.atomic():
            event = Event.objects.select_for_update(skip_locked=True).filter(pk=event_id).first()
            if event is None or event.dispatched_at is not None:
                return False
            for subscriber in [*_subscribers.get(event.type, ()), *_subscribers.get(ALL, ())]:
                subscriber(event)
            event.dispatched_at = timezone.now()
            event.save(update_fields=["dispatched_at"])
    except Exception:
        logger.exception("dispatching event %s failed; the next sweep retries it", event_id)
        return False
    return True


def pending_count() -> int:
    """Events not yet dispatched: a backlog that keeps growing means a subscriber keeps failing."""
    return Event.objects.filter(dispatched_at=None).count()


def dispatch_pending(now: datetime | None = None, limit: int = 500) -> int:
    """Dispatch events whose on-commit dispatch did not happen (the process died, or a subscriber failed)."""
    cutoff = (now or timezone.now()) - DISPATCH_GRACE
    ids = (
        Event.objects.filter(dispatched_at=None, created_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(dispatch(event_id) for event_id in list(ids))
