"""Prepaid credit pays an invoice at finalization (issue 15 part 6, decision 018): a "Prepaid credits applied"
line, the ledger records which grants paid it, and the Stripe invoice carries the remainder only."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.utils import timezone

from billing import credits, invoicing
from billing.models import LedgerEntry
from billing.pricing import to_minor_units
from payments import tasks
from spend import control
from tests.billing.builders import make_plan, subscribe
from tests.payments.stripe_world import SyncState, assert_one_faithful_copy
from tests.usage.builders import event


def test_credit_pays_the_invoice_by_priority_then_expiry_and_stripe_collects_the_rest(
    double, agent_client, agent
):
    tenant = agent.tenant
    tenant.billing_email = "billing@acme.test"
    tenant.save()
    subscribe(tenant, make_plan(), starts_on=date(2026, 1, 1))  # $49 base fee, gpt-4o-mini text, …
    usage = {"llm_input_text_tokens": 3_000_000, "llm_output_text_tokens": 1_000_000}
    assert agent_client.post("/api/v1/events", {"events": [event("e1", usage=usage)]}).status_code == 200
    now = timezone.now()
    later = credits.grant(
        tenant, "30.00", source="purchased", reason="top-up", priority=5, expires_at=now + timedelta(days=60)
    )
    sooner = credits.grant(
        tenant, "10.00", source="promotional", reason="promo", priority=5, expires_at=now + timedelta(days=10)
    )
    low = credits.grant(tenant, "5.00", source="goodwill", reason="sorry", priority=0)
    leftover = credits.grant(tenant, "0.01", source="goodwill", reason="spare", priority=-1)

    period_start, _ = invoicing.current_period(tenant, now - timedelta(minutes=1))
    invoice = invoicing.generate_invoice(tenant.pk, period_start)
    charged = invoice.total
    expected_charge = (
        Decimal("49.00") + Decimal("0.90") + Decimal("1.20")
    )  # fee + 3M × $0.30/M + 1M × $1.20/M
    assert charged == expected_charge
    invoice = invoicing.finalize_invoice(invoice.pk, force=True)

    applied = Decimal("30.00") + Decimal("10.00") + Decimal("5.00") + Decimal("0.01")
    assert invoice.total == charged - applied
    last = invoice.lines.order_by("-position").first()
    assert (last.kind, last.description, last.amount) == (
        "credits_applied",
        "Prepaid credits applied",
        -applied,
    )
    entries = LedgerEntry.objects.filter(kind="application", invoice=invoice).order_by("id")
    assert [(e.grant_id, e.amount) for e in entries] == [
        (sooner.pk, Decimal("-10.00")),  # same priority: the sooner expiry first
        (later.pk, Decimal("-30.00")),
        (low.pk, Decimal("-5.00")),
        (leftover.pk, Decimal("-0.01")),
    ]
    assert credits.ledger_balance(tenant) == 0
    assert control.balance(tenant).ledger_balance == 0

    assert tasks.sync_invoice_to_stripe(invoice.pk) == SyncState.SYNCED
    copy = assert_one_faithful_copy(double, invoice)  # one item per line, the credit line included
    assert copy["total"] == to_minor_units(charged - applied, "USD")

    # finalizing again applies nothing twice
    assert invoicing.finalize_invoice(invoice.pk, force=True).total == charged - applied
    assert LedgerEntry.objects.filter(kind="application").count() == 4


def test_credit_never_takes_an_invoice_below_zero(agent):
    tenant = agent.tenant
    subscribe(tenant, make_plan(), starts_on=date(2026, 1, 1))
    credits.grant(tenant, "500.00", source="purchased", reason="big top-up")
    period_start, _ = invoicing.current_period(tenant)
    invoice = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, period_start).pk, force=True)
    assert invoice.total == 0
    assert invoice.lines.get(kind="credits_applied").amount == Decimal("-49.00")
    assert credits.ledger_balance(tenant) == Decimal("451.00")


def test_credit_applied_to_one_invoice_is_never_billed_back_on_the_next(agent):
    """The next invoice re-prices the finalized period for late usage; the credit line priced nothing, so it
    must not come back as a +$ adjustment."""
    tenant = agent.tenant
    subscribe(tenant, make_plan(), starts_on=date(2026, 1, 1))
    credits.grant(
        tenant,
        "30.00",
        source="purchased",
        reason="top-up",
        effective_at=timezone.now() - timedelta(days=400),
    )
    march = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, date(2026, 3, 1)).pk, force=True)
    assert march.total == Decimal("19.00")  # $49 − $30
    april = invoicing.generate_invoice(tenant.pk, date(2026, 4, 1))
    assert not april.lines.filter(kind="adjustment").exists()
    assert april.total == Decimal("49.00")
