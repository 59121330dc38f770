"""Celery tasks of spend control: thin wrappers around spend.budgets, called with ids."""

from celery import shared_task

from notifications.models import Event
from spend import budgets
from spend.models import Budget


@shared_task(acks_late=True)
def check_budgets() -> int:
    """Beat: evaluate every budget; each threshold alerts once per period."""
    sent = 0
    for budget in Budget.objects.select_related("tenant").filter(tenant__status="active"):
        sent += len(budgets.check_budget(budget.tenant))
    return sent


@shared_task(
    # The name it had in billing.budget_tasks, so deliveries queued before the move still find their task.
    name="billing.budget_tasks.deliver_budget_webhook",
    acks_late=True,
    autoretry_for=(OSError,),
    retry_backoff=30,
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=8,
)
def deliver_budget_webhook(alert_id: int) -> None:
    budgets.deliver_webhook(alert_id)


def queue_webhook_delivery(event: Event) -> None:
    """Outbox subscriber for ``budget.threshold_crossed``: deliver the alert to the tenant's webhook, if set."""
    alert_id = event.data["alert_id"]
    if budgets.has_webhook(alert_id):
        deliver_budget_webhook.delay(alert_id)
