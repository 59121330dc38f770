"""Celery tasks of the outbox and of tenant webhooks: thin wrappers around notifications.outbox and
notifications.webhooks, called with ids."""

from __future__ import annotations

from datetime import datetime, timedelta

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from notifications import outbox, webhooks
from notifications.models import Event

# A wait longer than this is left to the sweep rather than queued with a countdown: Redis redelivers a message
# whose countdown outlasts its visibility timeout (one hour by default), and the sweep finds it anyway.
LONGEST_COUNTDOWN = timedelta(minutes=55)


@shared_task(acks_late=True)
def dispatch_pending_events() -> int:
    """Beat: dispatch events whose after-commit dispatch never ran."""
    return outbox.dispatch_pending()


@shared_task(acks_late=True)
def deliver_webhook(delivery_id: int, now: str | None = None) -> str:
    """One attempt of one delivery (``now``, ISO 8601, moves the scheduling clock in tests), then the next
    attempt queued. ``acks_late``: a worker killed mid-send leaves the message to be redelivered, and the
    delivery's lease to the sweep; either way the same ``webhook-id`` is sent again."""
    outcome = webhooks.attempt_delivery(delivery_id, now=datetime.fromisoformat(now) if now else None)
    if outcome.retry_in is not None and outcome.retry_in <= LONGEST_COUNTDOWN:
        deliver_webhook.apply_async((delivery_id,), countdown=outcome.retry_in.total_seconds())
    return outcome.state


@shared_task(acks_late=True)
def sweep_webhook_deliveries() -> int:
    """Beat: queue the deliveries that are due and that no message will bring (lost, too long to queue, or
    left by a worker killed mid-send)."""
    due = webhooks.due_deliveries(timezone.now())
    for delivery_id in due:
        deliver_webhook.delay(delivery_id)
    return len(due)


def queue_deliveries(event: Event) -> None:
    """Outbox subscriber for every event: create its deliveries (in the dispatch transaction) and queue them
    once that has committed."""
    delivery_ids = webhooks.fan_out(event)
    if delivery_ids:
        transaction.on_commit(lambda: queue(delivery_ids))


def queue(delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        deliver_webhook.delay(delivery_id)
