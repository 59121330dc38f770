"""A stateful Stripe test double that the real ``stripe`` SDK talks to over HTTP on loopback (DESIGN §7).

Start it with the ``stripe_double`` pytest fixture (``fixtures.py``) or ``StripeDouble().start()``; point the SDK
at ``double.url``. See README.md in this folder for what it models and how to inject faults.
"""

from .server import FAULT_KINDS, Fault, LoggedRequest, StripeDouble
from .webhooks import WebhookDelivery, build_event, build_webhook, signature_header

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "LoggedRequest",
    "StripeDouble",
    "WebhookDelivery",
    "build_event",
    "build_webhook",
    "signature_header",
]
