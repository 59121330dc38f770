"""``make stripe-smoke``: the Stripe flow of tests/billing/test_stripe.py against a real Stripe test account.

With ``STRIPE_API_KEY=sk_test_…`` set, in a throwaway database: a tenant on the demo plan uses voice AI for a
month; its invoice is finalized and synced to Stripe (customer, invoice, one item per line, finalized); Stripe
is told it was paid (out of band); Stripe's own ``invoice.paid`` event, read back from its events API, is
delivered to our ``/stripe/webhook``; then our invoice must be paid and Stripe's total equal ours. Exits 0 when
all of that holds, 1 when not, and 0 with "skipped: STRIPE_API_KEY not set" without a key.

Stripe cannot reach this process, so the event is signed here with a throwaway secret (the signature check
itself is covered by the tests; ``stripe listen`` exercises real deliveries, see docs/stripe.md). Each run
uses its own idempotency namespace, so runs never replay each other's requests, and deletes its Stripe
customer at the end unless ``STRIPE_SMOKE_KEEP=1``. ``STRIPE_API_BASE`` is honoured (a local double, a proxy).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))


def main() -> int:
    key = os.environ.get("STRIPE_API_KEY", "")
    if not key:
        print("skipped: STRIPE_API_KEY not set")
        return 0
    if not key.startswith(("sk_test_", "rk_test_")):
        print("refused: STRIPE_API_KEY must be a test-mode key (sk_test_… or rk_test_…)")
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    run = uuid.uuid4().hex[:10]
    connection.settings_dict["TEST"]["NAME"] = f"meterline_stripe_smoke_{run}"
    settings.STRIPE_NAMESPACE = f"meterline-smoke-{run}"
    settings.STRIPE_WEBHOOK_SECRET = f"whsec_smoke_{run}"
    databases = setup_databases(verbosity=0, interactive=False)
    try:
        return smoke(run)
    finally:
        teardown_databases(databases, verbosity=0)


def smoke(run: str) -> int:
    import stripe
    from django.conf import settings
    from django.test import Client

    from billing import periods
    from billing.demo import load_demo_billing
    from billing.models import Invoice
    from billing.pricing import to_minor_units
    from payments import stripe_sync
    from tenants.models import Agent, Tenant
    from usage import ingest, validation

    now = datetime.now(UTC)
    tenant = Tenant.objects.create(
        name=f"Meterline smoke test {run}",
        slug=f"smoke-{run}",
        billing_email=os.environ.get("STRIPE_SMOKE_EMAIL", ""),
    )
    agent = Agent.objects.create(tenant=tenant, name="smoke-agent")
    last_period = periods.previous_month(periods.period_containing(now, "UTC")[0])
    used_at = periods.local_midnight(last_period, "UTC") + timedelta(days=3, hours=12)
    usage = [
        (
            "api.openai.com",
            "gpt-4o-mini",
            {"llm_input_text_tokens": 4_200_000, "llm_output_text_tokens": 310_000},
        ),
        ("Deepgram", "nova-3", {"stt_audio_seconds": "5400.5"}),
        ("Cartesia", "sonic-3", {"tts_characters": 820_000}),
    ]
    events = [
        {
            "id": f"smoke-{n}",
            "timestamp": used_at.isoformat(),
            "session_id": "smoke-call",
            "provider": p,
            "model": m,
            "usage": u,
        }
        for n, (p, m, u) in enumerate(usage)
    ]
    batch = validation.validate_event_batch({"events": events}, validation.active_meter_codes(), now=used_at)
    ingest.store_events(tenant, agent, batch)
    invoice = load_demo_billing(tenant, now)  # the demo plan, and last month finalized
    print(f"finalized {invoice.number}: {invoice.total} {invoice.currency}, {invoice.lines.count()} lines")

    for attempt in range(1, 4):
        try:
            state = stripe_sync.sync_invoice(invoice.pk)
            break
        except stripe_sync.TRANSIENT_ERRORS as error:
            print(f"attempt {attempt}: {error}; retrying")
            time.sleep(2**attempt)
    invoice.refresh_from_db()
    if state != Invoice.SyncState.SYNCED:
        return fail(f"sync {state}: {invoice.sync_error}")
    api = stripe_sync.client()
    stripe_invoice = api.v1.invoices.retrieve(invoice.stripe_invoice_id)
    ours = to_minor_units(invoice.total, invoice.currency)
    print(
        f"synced to {stripe_invoice.id}: {stripe_invoice.status}, total {stripe_invoice.total} (ours {ours})"
    )
    if stripe_invoice.total != ours or stripe_invoice.status != "open":
        return fail("Stripe's invoice differs from ours")

    try:
        api.v1.invoices.pay(
            stripe_invoice.id,
            {"paid_out_of_band": True},
            {"idempotency_key": stripe_sync.idempotency_key("smoke-pay", invoice.pk)},
        )
        event = paid_event(api, stripe_invoice.id)
        if event is None:
            return fail("Stripe's invoice.paid event did not appear within 60 s")
        payload = json.dumps(event.to_dict(for_json=True), indent=2)
        signature = stripe.WebhookSignature.generate_signature_header(payload, settings.STRIPE_WEBHOOK_SECRET)
        response = Client().post(
            "/stripe/webhook", payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
        )
        print(f"webhook {event.id}: {response.status_code} {response.content.decode()}")
        invoice.refresh_from_db()
        if response.status_code != 200 or invoice.status != Invoice.Status.PAID:
            return fail(f"our invoice is {invoice.status} after the webhook")
        if stripe_sync.refresh_statuses() != 0:
            return fail("reconcile found a difference the webhook should have settled")
    finally:
        if os.environ.get("STRIPE_SMOKE_KEEP") != "1":
            tenant.refresh_from_db()
            api.v1.customers.delete(tenant.stripe_customer_id)
            print(f"deleted the test customer {tenant.stripe_customer_id} (STRIPE_SMOKE_KEEP=1 keeps it)")
    print(f"ok: {invoice.number} is paid here and on Stripe ({stripe_invoice.id}), {ours} minor units each")
    return 0


def paid_event(api, stripe_invoice_id: str):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for event in api.v1.events.list({"type": "invoice.paid", "limit": 20}).data:
            if event.data.object.id == stripe_invoice_id:
                return event
        time.sleep(2)
    return None


def fail(message: str) -> int:
    print(f"FAILED: {message}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
