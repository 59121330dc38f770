"""Payments' tables: the Stripe webhook events received (the Stripe sync state of an invoice is on the invoice)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models import Invoice


class StripeEvent(models.Model):
    """A webhook event from Stripe, stored by its id in the same transaction as its effect, so a redelivery
    finds it and changes nothing (DESIGN §7)."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    invoice = models.ForeignKey(
        Invoice,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="stripe_events",
        db_constraint=False,
    )
    outcome = models.CharField(max_length=200, blank=True, help_text="What processing the event did.")
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"
