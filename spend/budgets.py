"""Budgets: period-to-date spend against the tenant's monthly budget, and alerts at 50/80/100 %.

Each (tenant, period, threshold) alert is a row under a unique constraint, inserted before anything is sent
and together with its ``budget.threshold_crossed`` outbox event: whichever process inserts it sends it, so an
alert goes out once however often the check runs. The e-mail goes out at once; the webhook when the event is
dispatched (spend.tasks subscribes to it), through notifications.outbound (public addresses only). The webhook
is signed like Stripe's: ``Meterline-Signature: t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<body>")>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import selectors
from notifications import outbound, outbox
from spend.models import Budget, BudgetAlert
from tenants.models import Tenant

DEFAULT_THRESHOLDS = [50, 80, 100]
THRESHOLD_CROSSED = "budget.threshold_crossed"


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


def save_budget(
    tenant: Tenant, amount: Decimal, thresholds: list[int], alert_email: str, webhook_url: str
) -> Budget:
    budget, _ = Budget.objects.get_or_create(
        tenant=tenant, defaults={"monthly_amount": amount, "webhook_secret": secrets.token_hex(32)}
    )
    budget.monthly_amount, budget.thresholds = amount, sorted(set(thresholds))
    budget.alert_email, budget.webhook_url, budget.updated_at = alert_email, webhook_url, timezone.now()
    if not budget.webhook_secret:
        budget.webhook_secret = secrets.token_hex(32)
    budget.save()
    return budget


def check_budget(tenant: Tenant) -> list[BudgetAlert]:
    """Record and send the alerts for thresholds the current period's spend has crossed (each once)."""
    budget = Budget.objects.filter(tenant=tenant).first()
    if budget is None:
        return []
    spend = selectors.current_spend(tenant)
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
                alert.payload = _payload(alert, status)
                outbox.record(tenant.pk, THRESHOLD_CROSSED, {"alert_id": alert.pk, **alert.payload})
        except IntegrityError:
            continue  # this threshold already alerted for this period
        _email(budget, alert, status)
        sent.append(alert)
    return sent


def _payload(alert: BudgetAlert, status: BudgetStatus) -> dict:
    return {
        "type": THRESHOLD_CROSSED,
        "tenant": alert.tenant.slug,
        "period_start": alert.period_start.isoformat(),
        "threshold_percent": alert.threshold,
        "spend": str(status.spend),
        "budget": str(status.amount),
        "currency": alert.tenant.currency,
        "forecast": str(status.forecast.quantize(Decimal("0.01"))),
        "created_at": alert.created_at.isoformat(),
    }


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


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


def has_webhook(alert_id: int) -> bool:
    return Budget.objects.filter(tenant__budget_alerts=alert_id).exclude(webhook_url="").exists()


def deliver_webhook(alert_id: int) -> None:
    """POST the signed alert to the tenant's webhook; raises on failure so the task retries with backoff."""
    alert = BudgetAlert.objects.select_related("tenant__budget").get(pk=alert_id)
    if alert.webhook_delivered_at:
        return
    budget = alert.tenant.budget
    status = budget_status(alert.tenant)
    body = json.dumps(_payload(alert, status), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "Meterline-Signature": sign(budget.webhook_secret, body, int(time.time())),
    }
    try:
        outbound.post(budget.webhook_url, body, headers).raise_for_status()
    except outbound.DeliveryFailed as failure:
        # str(failure) is "HTTP <status>" or "could not connect": the tenant sees no more about the target.
        BudgetAlert.objects.filter(pk=alert.pk).update(webhook_error=str(failure))
        raise
    BudgetAlert.objects.filter(pk=alert.pk).update(webhook_delivered_at=timezone.now(), webhook_error="")
