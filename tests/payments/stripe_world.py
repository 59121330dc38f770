"""What the payments tests share: a billed tenant, finalized invoices, signed webhook deliveries, and checks
that Stripe's copy (in the test double) is faithful to ours."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, date, datetime

import pytest
import stripe
from django.test import Client

from billing import invoicing
from billing.models import Invoice
from billing.periods import next_month
from billing.pricing import to_minor_units
from payments import stripe_sync
from payments.models import StripeEvent
from tests.billing.builders import store, subscribe
from tests.factories import AgentFactory, TenantFactory
from tests.stripe_double.fixtures import fast_stripe_retries, stripe_double  # noqa: F401

SECRET = "whsec_test_meterline"
MARCH = date(2026, 3, 1)
APRIL = date(2026, 4, 1)
Status, SyncState = Invoice.Status, Invoice.SyncState


def billed_tenant(plan, **tenant_fields):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC", **tenant_fields))
    subscribe(agent.tenant, plan)
    return agent


def at(day: date, hour=12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def finalized(agent, usage_events=(), period=MARCH, now=None) -> Invoice:
    """Store ``(day, usage, provider, model)`` events, then finalize the period's invoice (finalization prices
    the period itself, as it does after the draft generation that the beat normally runs first)."""
    for n, (day, usage, provider, model) in enumerate(usage_events):
        store(agent, at(day), usage, f"{period}-{n}", provider=provider, model=model)
    draft, _ = Invoice.objects.get_or_create(
        tenant=agent.tenant,
        period_start=period,
        defaults={"period_end": next_month(period), "currency": "USD"},
    )
    return invoicing.finalize_invoice(draft.pk, force=True, now=now)


def typical_usage(rng: random.Random | None = None):
    """Lines: base fee, LLM input and output, STT, TTS characters (graduated) and TTS audio (priced at $0)."""
    rng = rng or random.Random(0)
    llm = {
        "llm_input_text_tokens": rng.randint(1, 9_000_000),
        "llm_output_text_tokens": rng.randint(1, 900_000),
    }
    tts = {"tts_characters": rng.randint(1, 2_000_000), "tts_audio_seconds": 42}
    return [
        (date(2026, 3, 2), llm, "api.openai.com", "gpt-4o-mini"),
        (date(2026, 3, 4), {"stt_audio_seconds": f"{rng.randint(1, 99_999) / 100}"}, "Deepgram", "nova-3"),
        (date(2026, 3, 5), tts, "Cartesia", "sonic-3"),
    ]


def stripe_copies(double, invoice: Invoice) -> list[dict]:
    """Every Stripe invoice carrying our invoice's id in its metadata."""
    return [i for i in double.invoices if i["metadata"].get("meterline_invoice_id") == str(invoice.pk)]


def assert_one_faithful_copy(double, invoice: Invoice) -> dict:
    """Exactly one Stripe invoice for ours, finalized, one item per line with our amounts, the same total."""
    copies = stripe_copies(double, invoice)
    assert len(copies) == 1, [c["id"] for c in copies]
    copy = copies[0]
    items = sorted(
        (i for i in double.invoice_items if i["invoice"] == copy["id"]),
        key=lambda i: int(i["metadata"]["meterline_line_position"]),
    )
    lines = list(invoice.lines.order_by("position"))
    assert [
        (int(i["metadata"]["meterline_line_position"]), i["amount"], i["description"]) for i in items
    ] == [(line.position, to_minor_units(line.amount, invoice.currency), line.description) for line in lines]
    assert copy["total"] == to_minor_units(invoice.total, invoice.currency)
    assert copy["status"] != "draft"
    invoice.refresh_from_db()
    assert (invoice.sync_state, invoice.stripe_invoice_id, invoice.sync_error) == (
        SyncState.SYNCED,
        copy["id"],
        "",
    )
    return copy


def deliver(event: dict, *, secret: str = SECRET, timestamp: int | None = None, client: Client | None = None):
    """POST ``event`` to the webhook as Stripe does: pretty-printed JSON, signed with the real ``stripe``
    library's scheme (``WebhookSignature.generate_signature_header``)."""
    payload = json.dumps(event, indent=2)
    signature = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return (client or Client()).post(
        "/stripe/webhook", payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
    )


def event_for(double, stripe_invoice_id: str, event_type: str) -> dict:
    return next(
        e for e in reversed(double.events(event_type)) if e["data"]["object"]["id"] == stripe_invoice_id
    )


def interrupted_at_finalize(double, plan, fault: str, error: type[Exception]) -> Invoice:
    """An invoice whose sync stopped at Stripe's finalize: ``fault`` answers it every time (the SDK's retries
    included), so the draft (or, with ``crash_after``, the finalized copy) is on Stripe and its id stored."""
    invoice = finalized(billed_tenant(plan), typical_usage())
    double.inject(r"/v1/invoices/in_\w+/finalize", "POST", fault, times=3)
    with pytest.raises(error):
        stripe_sync.sync_invoice(invoice.pk)
    invoice.refresh_from_db()
    return invoice


def paid_stripe_invoice_naming(
    double, invoice: Invoice, *, customer: str, amount: int, currency: str
) -> dict:
    """The signed ``invoice.paid`` of a Stripe invoice that someone else made and paid in our account, with our
    metadata naming ``invoice``: for ``customer``, of one item of ``amount`` minor units of ``currency``."""
    api = double.client()
    metadata = {
        "meterline_namespace": stripe_sync.namespace(),
        "meterline_invoice_id": str(invoice.pk),
        "meterline_invoice_number": invoice.number,
        "meterline_tenant_id": str(invoice.tenant_id),
    }
    created = api.v1.invoices.create(
        {
            "customer": customer,
            "currency": currency,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "metadata": metadata,
        }
    )
    api.v1.invoice_items.create(
        {"customer": customer, "invoice": created.id, "amount": amount, "currency": currency}
    )
    api.v1.invoices.finalize_invoice(created.id)
    double.transition(created.id, "pay")
    return event_for(double, created.id, "invoice.paid")


def synced(double, plan, **tenant_fields) -> Invoice:
    invoice = finalized(billed_tenant(plan, **tenant_fields), typical_usage())
    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.SYNCED
    invoice.refresh_from_db()
    return invoice


@pytest.mark.django_db
def paid_event(double, invoice: Invoice) -> dict:
    double.transition(invoice.stripe_invoice_id, "pay")
    return event_for(double, invoice.stripe_invoice_id, "invoice.paid")


def snapshot(invoice: Invoice) -> tuple:
    invoice.refresh_from_db()
    return (invoice.status, invoice.status_changed_at, invoice.stripe_status, StripeEvent.objects.count())


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def finalized_while_stripe_was_not_configured(settings, *args, **kwargs) -> Invoice:
    """No sync is queued on commit: as if the task was lost, for reconcile to find."""
    key, settings.STRIPE_API_KEY = settings.STRIPE_API_KEY, ""
    try:
        return finalized(*args, **kwargs)
    finally:
        settings.STRIPE_API_KEY = key
