"""Spend control's tables: a tenant's monthly budget and the alerts sent as spend crosses its thresholds.

Later: prepaid balances, credit grants and pre-call holds (DESIGN §13) live here too.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import Tenant, TenantRow, TenantScopedQuerySet


class Budget(TenantRow):
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


class BudgetAlert(TenantRow):
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


class SpendPolicy(TenantRow):
    """How a tenant pays (DESIGN §13, decision 018): after the month (postpaid, today's behaviour), or from
    prepaid credit with a soft limit (alerts only) or a hard limit (pre-call authorizations refused once the
    available balance would fall below −overdraft). Its row is also the lock that serializes a tenant's
    authorizations."""

    class Policy(models.TextChoices):
        POSTPAID = "postpaid"
        PREPAID_SOFT = "prepaid-soft"
        PREPAID_HARD = "prepaid-hard"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="spend_policy")
    policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.POSTPAID)

    class BalanceState(models.TextChoices):
        OK = "ok"
        LOW = "low"
        DEPLETED = "depleted"

    overdraft = models.DecimalField(
        max_digits=18, decimal_places=4, default=0, help_text="prepaid-hard: how far below zero calls may go."
    )
    low_balance_threshold = models.DecimalField(
        max_digits=18,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Prepaid: balance.low is sent when the available balance falls below this. Empty: never.",
    )
    auto_recharge_threshold = models.DecimalField(
        max_digits=18,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Prepaid: buy auto_recharge_amount through Stripe when the available balance falls below "
        "this. Empty: no auto-recharge.",
    )
    auto_recharge_amount = models.DecimalField(max_digits=18, decimal_places=4, null=True, blank=True)
    balance_state = models.CharField(
        max_length=16,
        choices=BalanceState.choices,
        default=BalanceState.OK,
        help_text="Where the available balance stood at the last check (each change down is announced once).",
    )
    balance_checked_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(
        default=timezone.now,
        help_text="Saving the policy resumes an auto-recharge paused by a failed payment.",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(overdraft__gte=0), name="spendpolicy_overdraft_non_negative"),
            models.CheckConstraint(
                condition=Q(auto_recharge_threshold__isnull=True)
                | Q(auto_recharge_amount__isnull=False, auto_recharge_amount__gt=0),
                name="spendpolicy_auto_recharge_has_an_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.policy}"


class Hold(TenantRow):
    """A pre-call authorization: an expected call cost held against the available balance until the session
    ends, it is released, or it expires."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(
        "tenants.Agent", on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    session_id = models.CharField(max_length=128)
    amount = models.DecimalField(max_digits=18, decimal_places=4)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=32, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="hold_amount_positive")]
        indexes = [
            models.Index(
                fields=["tenant", "expires_at"], condition=Q(released_at__isnull=True), name="hold_active"
            ),
            models.Index(fields=["tenant", "session_id"], name="hold_tenant_session"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} for {self.session_id}"
