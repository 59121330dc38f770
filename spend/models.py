"""Spend control's tables: a tenant's monthly budget and the alerts sent as spend crosses its thresholds.

Later: prepaid balances, credit grants and pre-call holds (DESIGN §13) live here too.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import Tenant, TenantScopedQuerySet


class Budget(models.Model):
    """A tenant's monthly spending budget and how to warn them as spend crosses its thresholds."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="budget")
    monthly_amount = models.DecimalField(
        max_digits=18, decimal_places=4, help_text="In the tenant's currency."
    )
    thresholds = models.JSONField(default=list, help_text="Percentages, e.g. [50, 80, 100].")
    alert_email = models.EmailField(blank=True, help_text="Empty: the tenant's billing e-mail.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(monthly_amount__gt=0), name="budget_positive")]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.monthly_amount} {self.tenant.currency}/month"


class BudgetAlert(models.Model):
    """One row per (tenant, period, threshold) that was crossed: the unique key makes each alert go out once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budget_alerts")
    period_start = models.DateField()
    threshold = models.PositiveSmallIntegerField()
    spend = models.DecimalField(max_digits=18, decimal_places=4)
    budget_amount = models.DecimalField(max_digits=18, decimal_places=4)
    created_at = models.DateTimeField(default=timezone.now)
    email_sent_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "period_start", "threshold"], name="budgetalert_once_per_threshold"
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.period_start:%Y-%m} {self.threshold}%"
