"""Celery tasks of the outbox: thin wrappers around notifications.outbox."""

from celery import shared_task

from notifications import outbox


@shared_task(acks_late=True)
def dispatch_pending_events() -> int:
    """Beat: dispatch events whose after-commit dispatch never ran."""
    return outbox.dispatch_pending()
