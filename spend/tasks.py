"""Celery tasks of spend control: thin wrappers around spend.budgets, called with ids."""

import logging

from celery import shared_task

from spend import budgets
from spend.models import Budget

logger = logging.getLogger(__name__)


@shared_task(acks_late=True)
def check_budgets() -> int:
    """Beat: evaluate every budget; each threshold alerts once per period."""
    sent = 0
    for budget in Budget.objects.select_related("tenant").filter(tenant__status="active"):
        sent += len(budgets.check_budget(budget.tenant))
    return sent


@shared_task(name="billing.budget_tasks.deliver_budget_webhook", acks_late=True)
def deliver_budget_webhook(alert_id: int) -> None:
    """Retired: budget alerts are tenant webhooks now. A message queued before the upgrade still finds this
    name and ends here; migration spend 0002 gave its alert a webhook delivery, which sends it."""
    logger.info("budget alert %s: delivered through tenant webhooks now", alert_id)
