"""``POST /stripe/webhook``: verify Stripe's signature on the raw body, then store and apply the event
(payments.stripe_sync.process_event). Anything that is not a correctly signed, recent Stripe event gets 400 and
changes nothing; a verified event always gets 200, even when it is a duplicate or not ours, so Stripe stops
redelivering it."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import stripe
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from payments import stripe_sync

logger = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300  # Stripe's default: older signatures are replays
FUTURE_SKEW_SECONDS = 30  # the SDK accepts any future timestamp; allow only clock skew
# Stripe's event ids (evt_…) and types (invoice.paid): checked with fullmatch before either reaches a query.
_EVENT_ID_RE = re.compile(r"[A-Za-z0-9_]{1,255}")
_EVENT_TYPE_RE = re.compile(r"[a-z0-9_.]{1,100}")


class WebhookRefused(Exception):
    pass


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        event = verified_event(request.body, request.headers.get("Stripe-Signature", ""))
    except WebhookRefused as refusal:
        logger.warning("refused a Stripe webhook delivery: %s", refusal)
        return JsonResponse({"error": str(refusal)}, status=400)
    outcome = stripe_sync.process_event(event)
    return JsonResponse({"received": event["id"], "outcome": outcome})


def verified_event(payload: bytes, signature: str, *, now: float | None = None) -> dict[str, Any]:
    """The event in ``payload`` if ``signature`` is Stripe's for it under ``STRIPE_WEBHOOK_SECRET``, made at most
    300 s ago and not in the future; otherwise :class:`WebhookRefused`."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRefused("STRIPE_WEBHOOK_SECRET is not set")
    try:
        stripe.Webhook.construct_event(payload, signature, secret, tolerance=TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as error:
        raise WebhookRefused(f"signature: {error.user_message or error}") from error
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # signed, but not an event
        raise WebhookRefused("the body is not a Stripe event") from error
    if _signed_at(signature) > (time.time() if now is None else now) + FUTURE_SKEW_SECONDS:
        raise WebhookRefused("signature: timestamp is in the future")
    event = json.loads(payload)
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and _EVENT_ID_RE.fullmatch(event["id"])
        and isinstance(event.get("type"), str)
        and _EVENT_TYPE_RE.fullmatch(event["type"])
    ):
        raise WebhookRefused("the body is not a Stripe event")
    if _holds_nul(event):  # PostgreSQL can store no NUL, in text or jsonb; Stripe never sends one
        raise WebhookRefused("the body holds a NUL character")
    return event


def _holds_nul(value: Any) -> bool:
    """Whether any key or string in the parsed event holds NUL (a loop, not recursion: depth is the sender's)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _signed_at(signature: str) -> int:
    """The ``t=`` of the header, read as the SDK reads it (its first ``t``)."""
    return int(
        next(item[1] for item in (part.split("=", 2) for part in signature.split(",")) if item[0] == "t")
    )
