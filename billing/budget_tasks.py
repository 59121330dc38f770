"""Celery tasks for budget alerts (imported by BillingConfig.ready so the worker registers them)."""

from celery import shared_task

from billing import budgets
from tenants.models import Budget


@shared_task(acks_late=True)
def check_budgets() -> int:
    """Beat: evaluate every budget; each threshold alerts once per period."""
    sent = 0
    for budget in Budget.objects.select_related("tenant").filter(tenant__status="active"):
        sent += len(budgets.check_budget(budget.tenant))
    return sent


@shared_task(
    acks_late=True,
    autoretry_for=(OSError,),
    retry_backoff=30,
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=8,
)
def deliver_budget_webhook(alert_id: int) -> None:
    budgets.deliver_webhook(alert_id)
