"""The outbox: one row per thing that happened, written in the transaction of the change it reports."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import Tenant, TenantRow, TenantScopedQuerySet


class Event(TenantRow):
    """Something a tenant's systems (and our own higher layers) may want to act on: ``invoice.finalized``,
    ``budget.threshold_reached``, ... . It commits with the change it reports, so a rollback leaves no event
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
            ),
            # the dispatch task finds an event by id alone, and the primary key is (tenant_id, id) (decision 024)
            models.Index(fields=["id"], name="event_id_lookup"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"


class WebhookEndpoint(TenantRow):
    """A URL of the tenant's that receives their events, signed the Standard Webhooks way
    (docs/webhooks.md). ``event_types`` empty means every type. During a secret roll the previous secret
    signs too, until ``previous_secret_expires_at``."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(default=list, blank=True, help_text="Empty: every event type.")
    is_enabled = models.BooleanField(default=True)
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=200, blank=True)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="First failure since the last success; three days of it disable."
    )

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.tenant} → {self.url}"

    def subscribes_to(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class WebhookDelivery(TenantRow):
    """One event to one endpoint. Unique per (event, endpoint): however often the outbox dispatches an event,
    an endpoint gets one delivery, and a delivered one is never sent again. ``sending_since`` is the lease
    of the attempt in flight: a worker killed mid-send leaves it, and once it expires the attempt is made
    again with the same ``webhook-id``."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # every attempt of the schedule failed
        CANCELLED = "cancelled"  # the endpoint was disabled before it could be delivered

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries", db_constraint=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_constraint=False
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    sending_since = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(
        max_length=100, blank=True, help_text='"HTTP <status>" or "could not connect".'
    )
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_response = models.CharField(max_length=500, blank=True, help_text="The response body's first bytes.")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "event", "endpoint"], name="webhookdelivery_once_per_endpoint"
            )
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(status="pending"), name="webhookdelivery_due"
            ),
            models.Index(fields=["endpoint", "-created_at"], name="webhookdelivery_recent"),
            # the delivery task finds a delivery by id alone, and the primary key is (tenant_id, id) (decision 024)
            models.Index(fields=["id"], name="webhookdelivery_id_lookup"),
        ]

    def __str__(self) -> str:
        return f"{self.event} → endpoint {self.endpoint_id}"

    @property
    def webhook_id(self) -> str:
        return f"evt_{self.event_id}"
