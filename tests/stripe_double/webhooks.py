"""Signed webhook deliveries, built the way Stripe sends them, for tests of a webhook endpoint.

Stripe signs ``f"{t}.{raw_body}"`` with HMAC-SHA256 under the endpoint secret and sends
``Stripe-Signature: t=<unix time>,v1=<hex digest>`` (one ``v1`` per active secret while a secret is being rolled).
``stripe.Webhook.construct_event`` checks exactly this, so a delivery built here is one the real library accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import objects


def signature_header(
    payload: bytes | str, secret: str | Sequence[str], *, timestamp: int | None = None
) -> str:
    """The ``Stripe-Signature`` header for ``payload``; pass several secrets to sign with each (secret rolling)."""
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    signed_at = int(time.time()) if timestamp is None else timestamp
    secrets = [secret] if isinstance(secret, str) else list(secret)
    signatures = [
        hmac.new(key.encode("utf-8"), f"{signed_at}.{text}".encode(), hashlib.sha256).hexdigest()
        for key in secrets
    ]
    return ",".join([f"t={signed_at}", *(f"v1={signature}" for signature in signatures)])


def build_event(
    data_object: dict[str, Any],
    event_type: str,
    *,
    event_id: str | None = None,
    created: int | None = None,
    previous_attributes: dict[str, Any] | None = None,
    livemode: bool = False,
    api_version: str | None = None,
) -> dict[str, Any]:
    """An ``event`` (Stripe's example object) whose ``data.object`` is ``data_object``, e.g. an invoice."""
    return objects.event(
        event_id=event_id or "evt_" + "".join(random.choices(string.ascii_letters + string.digits, k=24)),
        event_type=event_type,
        created=int(time.time()) if created is None else created,
        data_object=data_object,
        previous_attributes=previous_attributes,
        livemode=livemode,
        api_version=api_version,
    )


@dataclass(frozen=True)
class WebhookDelivery:
    event: dict[str, Any]
    payload: bytes
    signature: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": self.signature}


def build_webhook(
    event_or_object: dict[str, Any],
    secret: str | Sequence[str],
    *,
    event_type: str | None = None,
    timestamp: int | None = None,
    **event_fields: Any,
) -> WebhookDelivery:
    """A signed delivery of an event: pass an event (e.g. from ``StripeDouble.events()``), or an object and
    ``event_type`` to wrap it in a new one. ``timestamp`` sets the signature time (stale or future deliveries).

    The body is pretty-printed JSON as Stripe sends it; verify against these exact bytes, never a re-serialisation.
    """
    if event_or_object.get("object") == "event":
        event = event_or_object
    elif event_type is None:
        raise ValueError("event_type is needed to wrap an object in an event")
    else:
        event = build_event(event_or_object, event_type, **event_fields)
    payload = json.dumps(event, indent=2).encode()
    return WebhookDelivery(event, payload, signature_header(payload, secret, timestamp=timestamp))
