"""The outbox: one row per thing that happened, written in the transaction of the change it reports."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import Tenant, TenantScopedQuerySet


class Event(models.Model):
    """Something a tenant's systems (and our own higher layers) may want to act on: ``invoice.finalized``,
    ``budget.threshold_crossed``, ... . It commits with the change it reports, so a rollback leaves no event
    and a crash after the commit leaves one that is still dispatched (``dispatched_at`` stays empty until
    every subscriber has taken it)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=64)
    data = models.JSONField(encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(dispatched_at__isnull=True), name="event_undispatched"
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"
