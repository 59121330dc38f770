"""Budgets: period-to-date spend against the tenant's monthly budget, and alerts at 50/80/100 %.

Each (tenant, period, threshold) alert is a row under a unique constraint, inserted before anything is sent
and together with its ``budget.threshold_reached`` outbox event: whichever process inserts it sends it, so an
alert goes out once however often the check runs. The e-mail goes out at once; the tenant's webhook endpoints
subscribed to the type receive the event like any other (notifications.webhooks, docs/webhooks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import selectors
from notifications import outbox
from spend.models import Budget, BudgetAlert
from tenants.models import Tenant

DEFAULT_THRESHOLDS = [50, 80, 100]
THRESHOLD_REACHED = "budget.threshold_reached"


@dataclass(frozen=True)
class BudgetStatus:
    amount: Decimal
    spend: Decimal
    forecast: Decimal
    thresholds: list[int]

    @property
    def percent_used(self) -> Decimal:
        return (self.spend / self.amount * 100).quantize(Decimal("0.1")) if self.amount else Decimal(0)

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.spend

    @property
    def crossed(self) -> list[int]:
        return [t for t in self.thresholds if self.spend * 100 >= self.amount * t]


def budget_status(tenant: Tenant, spend: selectors.Spend | None = None) -> BudgetStatus | None:
    budget = Budget.objects.filter(tenant=tenant).first()
    if budget is None:
        return None
    spend = spend or selectors.current_spend(tenant)
    return BudgetStatus(
        budget.monthly_amount, spend.total, spend.forecast(), sorted(budget.thresholds or DEFAULT_THRESHOLDS)
    )


def save_budget(tenant: Tenant, amount: Decimal, thresholds: list[int], alert_email: str) -> Budget:
    budget, _ = Budget.objects.get_or_create(tenant=tenant, defaults={"monthly_amount": amount})
    budget.monthly_amount, budget.thresholds = amount, sorted(set(thresholds))
    budget.alert_email, budget.updated_at = alert_email, timezone.now()
    budget.save()
    return budget


def check_budget(tenant: Tenant, spend: selectors.Spend | None = None) -> list[BudgetAlert]:
    """Record and send the alerts for thresholds the current period's spend has crossed (each once). Called by
    spend.control.check, which passes the period it has already priced."""
    budget = Budget.objects.filter(tenant=tenant).first()
    if budget is None:
        return []
    spend = spend or selectors.current_spend(tenant)
    status = budget_status(tenant, spend)
    sent = []
    for threshold in status.crossed:
        try:
            with transaction.atomic():
                alert = BudgetAlert.objects.create(
                    tenant=tenant,
                    period_start=spend.start,
                    threshold=threshold,
                    spend=spend.total,
                    budget_amount=budget.monthly_amount,
                )
                outbox.record(tenant.pk, THRESHOLD_REACHED, _event_data(alert, status))
        except IntegrityError:
            continue  # this threshold already alerted for this period
        _email(budget, alert, status)
        sent.append(alert)
    return sent


def _event_data(alert: BudgetAlert, status: BudgetStatus) -> dict:
    """Version 1 of ``budget.threshold_reached`` (docs/webhooks.md): decimal strings in the tenant's currency."""
    return {
        "alert_id": alert.pk,
        "period_start": alert.period_start.isoformat(),
        "threshold_percent": alert.threshold,
        "spend": str(status.spend),
        "budget": str(status.amount),
        "currency": alert.tenant.currency,
        "forecast": str(status.forecast.quantize(Decimal("0.01"))),
    }


def _email(budget: Budget, alert: BudgetAlert, status: BudgetStatus) -> None:
    tenant = alert.tenant
    recipient = budget.alert_email or tenant.billing_email
    if recipient:
        send_mail(
            f"[Meterline] {tenant.name}: {alert.threshold}% of the monthly budget used",
            f"Spend this period: {status.spend} {tenant.currency} of a {status.amount} {tenant.currency} budget "
            f"({status.percent_used}%). Forecast for the period: {status.forecast.quantize(Decimal('0.01'))}.",
            settings.DEFAULT_FROM_EMAIL,
            [recipient],
        )
        BudgetAlert.objects.filter(pk=alert.pk).update(email_sent_at=timezone.now())
