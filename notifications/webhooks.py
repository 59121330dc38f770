"""Tenant webhooks: every outbox event, delivered to the tenant's endpoints, signed the Standard Webhooks way.

The outbox dispatch calls :func:`fan_out` inside the transaction that marks the event dispatched, so the
delivery rows (one per enabled, subscribed endpoint, unique per event and endpoint) commit with that mark: an
event is fanned out once, however often the sweep retries its dispatch. Each delivery is then attempted by
a Celery task (notifications.tasks) through :func:`attempt_delivery`:

- the attempt is *claimed* in a short transaction under the endpoint's row lock (at most
  ``WEBHOOKS_MAX_CONCURRENT_PER_ENDPOINT`` leases in flight per endpoint), then POSTed outside any
  transaction with ``notifications.outbound.post`` (public addresses only, no redirects, short deadline);
- 2xx: delivered, never sent again. Anything else: the next attempt is scheduled along :data:`RETRY_SCHEDULE`
  (about three days, with jitter); after the last one the delivery has failed;
- a worker killed mid-send leaves the lease (``sending_since``); once :data:`LEASE` has passed the sweep
  attempts it again, with the same ``webhook-id`` (the event's), which receivers dedupe on;
- an endpoint failing for :data:`DISABLE_AFTER` (no 2xx since its first failure) is disabled, its pending
  deliveries cancelled, and the tenant's owners get an e-mail.

Signing uses the ``standardwebhooks`` package (never our own HMAC code); see docs/webhooks.md for the wire
format and docs/decisions/013-tenant-webhooks.md for the choices.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks import Webhook

from notifications import outbound
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from tenants.models import Membership, Tenant

logger = logging.getLogger(__name__)

PING = "ping"
# The types an endpoint can subscribe to, with what they mean (the portal's choices; docs/webhooks.md has the
# payloads). The code that records each one owns its constant; this is the tenant-facing catalogue.
EVENT_TYPES = {
    "invoice.created": "A draft invoice was opened for a new billing period.",
    "invoice.finalized": "An invoice was finalized: numbered, immutable, open for payment.",
    "invoice.paid": "An invoice was paid.",
    "invoice.voided": "An invoice was voided.",
    "invoice.marked_uncollectible": "An invoice was marked uncollectible.",
    "invoice.payment_failed": "A payment attempt for an invoice failed.",
    "credit_note.created": "A credit note was issued on an invoice (what is due lowered, a refund, or credit).",
    "budget.threshold_reached": "Period-to-date spend reached a threshold of the monthly budget.",
    "usage.conflict_detected": "A usage event was resent with the same id but a different payload.",
    "usage.corrected": "Usage events were retracted or replaced: they no longer count.",
    "credit.granted": "Prepaid credit was granted (bought, promotional, goodwill or a refund).",
    "credit.expired": "What was left of a credit grant expired.",
    "authorization.denied": "A pre-call hold was refused: the prepaid balance does not cover it.",
    "balance.low": "The available prepaid balance fell below the low-balance threshold.",
    "balance.depleted": "The available prepaid balance reached zero or less.",
    "balance.recharged": "A top-up or auto-recharge was paid and its credit granted.",
    "balance.recharge_failed": "A top-up or auto-recharge payment failed (auto-recharge pauses).",
}

# Wait after failed attempt n (1-based) before attempt n + 1; the sum is about three days (71 h 35 min).
RETRY_SCHEDULE = [
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=14),
    timedelta(hours=16),
]
JITTER = 0.2  # each wait is drawn from ±20 % of the schedule's, so a failed burst does not retry in lockstep
DISABLE_AFTER = timedelta(days=3)
# The longest an attempt can take is outbound.DEADLINE_SECONDS plus DNS; a lease older than this was lost.
LEASE = timedelta(seconds=60)
BUSY_RETRY = timedelta(seconds=2)
ROLL_OVERLAP = timedelta(hours=24)
RESPONSE_SHOWN_CHARS = 500
DEFAULT_MAX_CONCURRENT = 4


def max_concurrent() -> int:
    return int(getattr(settings, "WEBHOOKS_MAX_CONCURRENT_PER_ENDPOINT", DEFAULT_MAX_CONCURRENT))


def allows_http() -> bool:
    return bool(getattr(settings, "WEBHOOKS_ALLOW_HTTP", False))


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes (the specification allows 24 to 64)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def url_problem(url: str) -> str | None:
    """Why we would never deliver to ``url`` (for the portal form), judged without DNS: https only unless
    ``WEBHOOKS_ALLOW_HTTP``, and everything notifications.outbound refuses."""
    if urlsplit(url.strip()).scheme.lower() == "http" and not allows_http():
        return "webhook URLs must use https"
    return outbound.url_problem(url)


def create_endpoint(
    tenant: Tenant, url: str, description: str = "", event_types: list[str] = ()
) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        tenant=tenant,
        url=url,
        description=description,
        event_types=sorted(set(event_types)),
        secret=new_secret(),
    )


def update_endpoint(endpoint: WebhookEndpoint, url: str, description: str, event_types: list[str]) -> None:
    endpoint.url, endpoint.description, endpoint.event_types = url, description, sorted(set(event_types))
    endpoint.updated_at = timezone.now()
    endpoint.save(update_fields=["url", "description", "event_types", "updated_at"])


def set_enabled(
    endpoint: WebhookEndpoint, enabled: bool, *, reason: str = "", now: datetime | None = None
) -> None:
    """Enable, or disable with a reason. Disabling cancels what is still pending (a manager can resend a
    delivery once the endpoint is back); enabling starts a clean health record."""
    now = now or timezone.now()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if enabled:
            endpoint.is_enabled, endpoint.disabled_at, endpoint.disabled_reason = True, None, ""
            endpoint.failing_since = None
        else:
            endpoint.is_enabled, endpoint.disabled_at, endpoint.disabled_reason = False, now, reason[:200]
            endpoint.deliveries.filter(status=WebhookDelivery.Status.PENDING).update(
                status=WebhookDelivery.Status.CANCELLED, next_attempt_at=None, sending_since=None
            )
        endpoint.updated_at = now
        endpoint.save()


def roll_secret(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> str:
    """A new secret, returned once; the current one keeps signing beside it for :data:`ROLL_OVERLAP`, so
    receivers can switch without dropping a delivery. Rolling again within the overlap drops the oldest."""
    now = now or timezone.now()
    secret = new_secret()
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        locked.previous_secret, locked.previous_secret_expires_at = locked.secret, now + ROLL_OVERLAP
        locked.secret, locked.updated_at = secret, now
        locked.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    return secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    rolled = (
        endpoint.previous_secret
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > now
    )
    return [endpoint.secret, endpoint.previous_secret] if rolled else [endpoint.secret]


def payload(event: Event) -> bytes:
    """The body: ``{"type", "timestamp", "data"}``, the same bytes on every attempt (built from the stored
    event only)."""
    document = {"type": event.type, "timestamp": event.created_at.isoformat(), "data": event.data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(webhook_id: str, body: bytes, secrets_: list[str], sent_at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers; with more than one secret (a roll) one ``v1,`` signature per secret."""
    text = body.decode()
    signatures = [Webhook(secret).sign(webhook_id, sent_at, text) for secret in secrets_]
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def fan_out(event: Event) -> list[int]:
    """Create the deliveries of ``event`` (once per endpoint, whatever the number of calls) and return the ids
    of those that wait to be sent. Runs inside the outbox's dispatch transaction."""
    if event.type not in EVENT_TYPES:
        return []
    endpoints = WebhookEndpoint.objects.filter(tenant_id=event.tenant_id, is_enabled=True).filter(
        Q(event_types=[]) | Q(event_types__contains=[event.type])
    )
    endpoint_ids = list(endpoints.values_list("pk", flat=True))
    if not endpoint_ids:
        return []
    WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(tenant_id=event.tenant_id, event=event, endpoint_id=pk) for pk in endpoint_ids],
        ignore_conflicts=True,
    )
    return list(
        WebhookDelivery.objects.filter(
            event=event, endpoint_id__in=endpoint_ids, status=WebhookDelivery.Status.PENDING
        ).values_list("pk", flat=True)
    )


def send_ping(endpoint: WebhookEndpoint) -> int:
    """A ``ping`` to this one endpoint (not fanned out: it asks whether this URL works). Returns the delivery."""
    with transaction.atomic():
        now = timezone.now()
        event = Event.objects.create(
            tenant_id=endpoint.tenant_id,
            type=PING,
            data={"endpoint_id": endpoint.pk, "message": "Meterline webhook test"},
            created_at=now,
            dispatched_at=now,
        )
        return WebhookDelivery.objects.create(tenant_id=event.tenant_id, event=event, endpoint=endpoint).pk


def resend(delivery: WebhookDelivery) -> bool:
    """Send a delivery again (same event, same ``webhook-id``) at once. Refused while the endpoint is disabled,
    and for a delivery still pending (its retries are under way; clearing its lease could send it twice)."""
    if not delivery.endpoint.is_enabled:
        return False
    finished = WebhookDelivery.objects.filter(pk=delivery.pk).exclude(status=WebhookDelivery.Status.PENDING)
    return bool(
        finished.update(
            status=WebhookDelivery.Status.PENDING, next_attempt_at=timezone.now(), sending_since=None
        )
    )


@dataclass(frozen=True)
class Outcome:
    """What an attempt did; ``retry_in`` is when the caller should try again (None: the sweep decides)."""

    state: str
    retry_in: timedelta | None = None


def attempt_delivery(delivery_id: int, *, now: datetime | None = None) -> Outcome:
    """Claim, send and record one attempt of a delivery, if it is due and not in flight. Safe to call any
    number of times (a duplicate message, the sweep and a resend may all call it): only a claim sends."""
    now = now or timezone.now()
    claimed = _claim(delivery_id, now)
    if isinstance(claimed, Outcome):
        return claimed
    delivery, endpoint = claimed
    body = payload(delivery.event)
    headers = signed_headers(delivery.webhook_id, body, signing_secrets(endpoint, now), timezone.now())
    started = time.monotonic()
    if urlsplit(endpoint.url).scheme.lower() != "https" and not allows_http():
        logger.warning("webhook endpoint %s: http URL refused (WEBHOOKS_ALLOW_HTTP is off)", endpoint.pk)
        status_code, error, response = None, outbound.COULD_NOT_CONNECT, b""
    else:
        try:
            answer = outbound.post(endpoint.url, body, headers)
            status_code, response = answer.status, answer.body
            error = "" if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except outbound.DeliveryFailed as failed:
            status_code, error, response = None, str(failed), b""
    latency_ms = int((time.monotonic() - started) * 1000)
    return _record(delivery.pk, now, status_code, error, latency_ms, response)


def _claim(delivery_id: int, now: datetime) -> tuple[WebhookDelivery, WebhookEndpoint] | Outcome:
    with transaction.atomic():
        endpoint_id = (
            WebhookDelivery.objects.filter(pk=delivery_id).values_list("endpoint_id", flat=True).first()
        )
        if endpoint_id is None:
            return Outcome("gone")
        # The endpoint's row lock serializes claims per endpoint, so the count of leases below is exact.
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint_id)
        delivery = WebhookDelivery.objects.select_for_update().select_related("event").get(pk=delivery_id)
        if delivery.status != WebhookDelivery.Status.PENDING:
            return Outcome(delivery.status)
        if not endpoint.is_enabled:
            delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.CANCELLED, None
            delivery.save(update_fields=["status", "next_attempt_at"])
            return Outcome(delivery.status)
        if delivery.sending_since and delivery.sending_since > now - LEASE:
            return Outcome("in flight")
        if delivery.next_attempt_at and delivery.next_attempt_at > now + timedelta(seconds=1):
            return Outcome("not due")
        leased = endpoint.deliveries.filter(
            status=WebhookDelivery.Status.PENDING, sending_since__gt=now - LEASE
        ).count()
        if leased >= max_concurrent():
            delivery.next_attempt_at = now + BUSY_RETRY
            delivery.save(update_fields=["next_attempt_at"])
            return Outcome("busy", BUSY_RETRY)
        delivery.sending_since, delivery.last_attempt_at = now, now
        delivery.attempts += 1
        delivery.save(update_fields=["sending_since", "last_attempt_at", "attempts"])
    return delivery, endpoint


def _record(
    delivery_id: int, now: datetime, status_code: int | None, error: str, latency_ms: int, response: bytes
) -> Outcome:
    with transaction.atomic():
        endpoint_id = (
            WebhookDelivery.objects.filter(pk=delivery_id).values_list("endpoint_id", flat=True).first()
        )
        if endpoint_id is None:
            return Outcome("gone")  # the endpoint was deleted while we were sending
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint_id)
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        delivery.sending_since = None
        delivery.last_status_code, delivery.last_error, delivery.last_latency_ms = (
            status_code,
            error,
            latency_ms,
        )
        delivery.last_response = response.decode("utf-8", "replace")[:RESPONSE_SHOWN_CHARS]
        outcome: Outcome
        if not error:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = (
                WebhookDelivery.Status.DELIVERED,
                now,
                None,
            )
            if endpoint.failing_since is not None:
                WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=None)
            outcome = Outcome(delivery.status)
        elif delivery.attempts > len(RETRY_SCHEDULE):
            delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.FAILED, None
            outcome = Outcome(delivery.status)
        else:
            wait = _jittered(RETRY_SCHEDULE[delivery.attempts - 1])
            delivery.next_attempt_at = now + wait
            outcome = Outcome("retry", wait)
        delivery.save()
        if error:
            exhausted = delivery.status == WebhookDelivery.Status.FAILED
            outcome = (
                _note_failure(endpoint, now, exhausted_since=delivery.created_at if exhausted else None)
                or outcome
            )
    return outcome


def _jittered(wait: timedelta) -> timedelta:
    return wait * random.uniform(1 - JITTER, 1 + JITTER)  # spreading retries, not a secret


def _note_failure(
    endpoint: WebhookEndpoint, now: datetime, *, exhausted_since: datetime | None = None
) -> Outcome | None:
    """Start the endpoint's failing clock, or disable the endpoint once it has run for DISABLE_AFTER, or
    once a delivery made before the clock started has used its whole schedule (about three days too: the
    jitter may make that a little less, and an endpoint that will not take one event in three days of
    attempts is as dead). ``endpoint`` is locked by the caller."""
    if endpoint.failing_since is None:
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=now)
        return None
    gave_up = exhausted_since is not None and endpoint.failing_since <= exhausted_since + LEASE
    if not endpoint.is_enabled or (now - endpoint.failing_since < DISABLE_AFTER and not gave_up):
        return None
    set_enabled(
        endpoint, False, reason="Disabled automatically: every delivery failed for three days.", now=now
    )
    transaction.on_commit(lambda: _email_owners(endpoint))
    logger.warning("webhook endpoint %s disabled after failing since %s", endpoint.pk, endpoint.failing_since)
    return Outcome("endpoint disabled")


def _email_owners(endpoint: WebhookEndpoint) -> None:
    owners = Membership.objects.filter(tenant_id=endpoint.tenant_id, role=Membership.Role.OWNER)
    recipients = sorted({e for e in owners.values_list("user__email", flat=True) if e})
    if recipients:
        send_mail(
            f"[Meterline] Webhook endpoint disabled: {endpoint.url}"[:200],
            f"Every delivery to {endpoint.url} has failed since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC, so "
            "Meterline disabled the endpoint and stopped sending to it. Fix the receiver, enable the endpoint "
            "again on the Webhooks page, and resend the deliveries you need from its log.",
            settings.DEFAULT_FROM_EMAIL,
            recipients,
        )


def due_deliveries(
    now: datetime, *, grace: timedelta = timedelta(seconds=30), limit: int = 1000
) -> list[int]:
    """Pending deliveries that are due but that no queued message took: the countdown was lost, the wait was
    too long to queue, or a worker died mid-send (its lease expired). ``grace`` leaves the queued messages
    their moment, so the sweep rarely duplicates one (a duplicate would be harmless: only a claim sends)."""
    return list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now - grace
        )
        .filter(Q(sending_since__isnull=True) | Q(sending_since__lte=now - LEASE))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


@dataclass(frozen=True)
class Health:
    state: str  # "healthy", "failing", "disabled", "new"
    delivered: int
    failed: int
    pending: int


def health(endpoint: WebhookEndpoint, *, since: datetime | None = None) -> Health:
    """The endpoint at a glance for the portal: its state and the last day's deliveries by outcome."""
    since = since or timezone.now() - timedelta(days=1)
    recent = endpoint.deliveries.filter(created_at__gte=since)
    delivered = recent.filter(status=WebhookDelivery.Status.DELIVERED).count()
    failing = recent.exclude(last_error="").exclude(status=WebhookDelivery.Status.DELIVERED).count()
    pending = endpoint.deliveries.filter(status=WebhookDelivery.Status.PENDING).count()
    if not endpoint.is_enabled:
        state = "disabled"
    elif endpoint.failing_since is not None:
        state = "failing"
    elif delivered or endpoint.deliveries.exists():
        state = "healthy"
    else:
        state = "new"
    return Health(state, delivered, failing, pending)
