"""Invoicing in batches of tenants (billing.invoice_batches, decision 026): the same invoices as the per-tenant
path, what is read once per batch, idempotence, and a tenant that fails."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import credits, invoice_batches, invoicing, period_pricing, tasks
from billing.models import (
    AppliedCoupon,
    BillingProfile,
    Coupon,
    Invoice,
    PlanVersion,
    Price,
    ProviderRate,
    TaxRate,
)
from notifications.models import Event
from tests.billing.builders import M, line_tuples, make_plan, store, subscribe
from tests.factories import AgentFactory, TenantFactory

MARCH, APRIL = date(2026, 3, 1), date(2026, 4, 1)
NOW = datetime(2026, 4, 3, tzinfo=UTC)  # March is due: its grace period is over in every zone


class World:
    """Tenants with different plans, versions, tiers, coupons, taxes, credit, currencies and time zones, and
    what each stored: ``stored[tenant][(meter, provider, model)]`` summed over its events inside its local
    March, computed here from the events themselves."""

    def __init__(self) -> None:
        self.tenants = []
        self.stored: dict[int, dict[tuple, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        shared = make_plan(slug="shared", agent_fee="2.50")  # graduated TTS tiers, a per-agent fee
        ProviderRate.objects.create(
            provider="api.openai.com",
            model_pattern="gpt-4o-mini*",
            meter_id="llm_input_audio_tokens",
            cost_per_unit=Decimal("10.00"),
            unit_size=M,
            effective_from=date(2026, 1, 1),
        )
        Price.objects.create(
            version=shared.versions.get(),
            meter_id="llm_input_audio_tokens",
            price_model="cost_plus",
            markup=Decimal("0.25"),
            unit_size=M,
        )
        newer = PlanVersion.objects.create(
            plan=shared, version=2, effective_from=date(2026, 3, 10), base_fee=59
        )
        Price.objects.create(
            version=newer, meter_id="llm_input_text_tokens", unit_amount=Decimal("0.40"), unit_size=M
        )
        euro = make_plan(
            slug="euro",
            currency="EUR",
            base_fee="20.00",
            prices=[
                {"meter_id": "llm_input_text_tokens", "price_model": "volume", "unit_size": M, "tiers": [
                    (Decimal(5_000_000), "0.50"), (None, "0.35")]},
                {"meter_id": "stt_audio_seconds", "unit_amount": Decimal("0.010"), "unit_size": Decimal(60),
                 "minimum_charge": Decimal("3.00")},
            ],
        )  # fmt: skip
        team = make_plan(slug="team", base_fee="99.00", prices=[
            {"meter_id": "llm_input_text_tokens", "unit_amount": Decimal("0.25"), "unit_size": M,
             "free_allowance": Decimal(1_000_000)}])  # fmt: skip
        yen = make_plan(slug="yen", currency="JPY", base_fee="5000", prices=[
            {"meter_id": "tts_characters", "price_model": "package", "package_size": Decimal(1000),
             "package_amount": Decimal(3)}])  # fmt: skip

        a = self.tenant("UTC", "USD", shared)
        b = self.tenant("Asia/Kolkata", "EUR", euro)
        c = self.tenant("America/New_York", "USD", shared)
        d = self.tenant("UTC", "USD", shared, ends_on=date(2026, 3, 15))
        subscribe(d.tenant, team, starts_on=date(2026, 3, 15))
        e = self.tenant("UTC", "JPY", yen, starts_on=date(2026, 3, 10))  # March 1–10: usage under no plan

        percent = Coupon.objects.create(
            code="ten", name="10 % off", percent_off=Decimal(10), duration="forever"
        )
        AppliedCoupon.objects.create(tenant=b.tenant, coupon=percent, starts_on=MARCH)
        five = Coupon.objects.create(code="five", name="$5 off", amount_off=Decimal(5), currency="USD")
        AppliedCoupon.objects.create(tenant=c.tenant, coupon=five, starts_on=MARCH)
        BillingProfile.objects.create(
            tenant=c.tenant,
            legal_name="C",
            address_line1="1 Rue",
            city="Paris",
            country="FR",
            is_business=False,
        )
        TaxRate.objects.create(name="TVA", country="FR", percent=Decimal(20), effective_from=date(2024, 1, 1))
        credits.grant(
            e.tenant,
            1200,
            source="promotional",
            reason="welcome",
            effective_at=datetime(2026, 3, 1, tzinfo=UTC),
        )

        second_a = AgentFactory(tenant=a.tenant)
        for n, agent in enumerate([a, second_a, b, c, d, e]):
            self.event(
                agent, datetime(2026, 3, 5, 9, tzinfo=UTC), {"llm_input_text_tokens": 3_000_000 + n}, f"x{n}"
            )
            self.event(
                agent, datetime(2026, 3, 20, 9, tzinfo=UTC), {"llm_input_text_tokens": 4_500_001}, f"y{n}"
            )
            self.event(agent, datetime(2026, 3, 21, 9, tzinfo=UTC), {"tts_characters": 650_000 + n}, f"t{n}",
                       provider="Cartesia", model="sonic-3")  # fmt: skip
            self.event(agent, datetime(2026, 3, 22, 9, tzinfo=UTC), {"stt_audio_seconds": 1234}, f"s{n}",
                       provider="Deepgram", model="nova-3")  # fmt: skip
            self.event(
                agent, datetime(2026, 3, 23, 9, tzinfo=UTC), {"llm_input_audio_tokens": 70_000}, f"a{n}"
            )
            # on both sides of the month's edges, in UTC and in the tenant's zone
            self.event(agent, datetime(2026, 2, 28, 20, tzinfo=UTC), {"llm_input_text_tokens": 1000}, f"e{n}")
            self.event(agent, datetime(2026, 3, 31, 23, tzinfo=UTC), {"llm_input_text_tokens": 2000}, f"l{n}")

    def tenant(self, zone, currency, plan, starts_on=date(2026, 1, 1), ends_on=None):
        agent = AgentFactory(tenant=TenantFactory(timezone=zone, currency=currency))
        subscribe(agent.tenant, plan, starts_on=starts_on, ends_on=ends_on)
        self.tenants.append(agent.tenant)
        return agent

    def event(self, agent, when, usage, event_id, provider="api.openai.com", model="gpt-4o-mini"):
        store(agent, when, usage, event_id, provider=provider, model=model, session_id=f"s-{event_id}")
        local = when.astimezone(ZoneInfo(agent.tenant.timezone))
        if (local.year, local.month) == (2026, 3):
            for meter, quantity in usage.items():
                self.stored[agent.tenant_id][(meter, provider, model)] += Decimal(quantity)

    @property
    def ids(self) -> list[int]:
        return [t.pk for t in self.tenants]


@pytest.fixture
def world(db):
    return World()


def snapshot(invoice: Invoice) -> tuple:
    invoice.refresh_from_db()
    return (
        invoice.currency,
        invoice.total,
        invoice.platform_cost,
        invoice.unmatched,
        invoice.number,
        invoice.status,
        line_tuples(invoice),
        [line.price_snapshot for line in invoice.lines.order_by("position")],
        [line.plan_version_id for line in invoice.lines.order_by("position")],
    )


def per_tenant(tenant_ids: list[int], finalize: bool) -> dict[int, tuple]:
    """What the per-tenant path (a task per tenant) writes, then rolled back."""
    with transaction.atomic():
        found = {}
        for tenant_id in tenant_ids:
            invoice = invoicing.generate_invoice(tenant_id, MARCH)
            if finalize:
                invoice = invoicing.finalize_invoice(invoice.pk, force=True, now=NOW)
            found[tenant_id] = snapshot(invoice)
        transaction.set_rollback(True)
    return found


def batched(tenant_ids: list[int], finalize: bool) -> dict[int, tuple]:
    outcome = invoice_batches.invoice_batch(MARCH, tenant_ids, finalize=finalize, force=True, now=NOW)
    assert outcome.failed == []
    return {i.tenant_id: snapshot(i) for i in Invoice.objects.filter(pk__in=outcome.invoices)}


def billed_quantities(invoice: Invoice) -> dict[tuple, Decimal]:
    billed: dict[tuple, Decimal] = defaultdict(Decimal)
    for line in invoice.lines.filter(kind="usage"):
        billed[(line.meter, line.provider, line.model)] += line.quantity
    for item in invoice.unmatched:
        billed[(item["meter"], item["provider"], item["model"])] += Decimal(item["quantity"])
    return dict(billed)


@pytest.mark.parametrize("finalize", [False, True], ids=["drafts", "finalized"])
def test_a_batch_writes_the_same_invoices_as_the_per_tenant_path(world, finalize):
    expected = per_tenant(world.ids, finalize)
    assert Invoice.objects.count() == 0

    got = batched(world.ids, finalize)

    assert got == expected
    assert {len(s[6]) for s in got.values()} != {0}  # lines were written
    for tenant in world.tenants:
        invoice = Invoice.objects.get(tenant=tenant)
        assert billed_quantities(invoice) == dict(world.stored[tenant.pk])  # invoice = Σ its events
        assert invoice.total == sum(line.amount for line in invoice.lines.all())
    kinds = {line.kind for line in Invoice.objects.get(tenant=world.tenants[2]).lines.all()}
    assert {"discount", "tax", "usage", "base_fee"} <= kinds  # the coupon and the tax were in the batch
    if finalize:
        numbers = sorted(Invoice.objects.values_list("number", flat=True))
        assert numbers == [f"ML-2026-{n:06d}" for n in range(1, len(world.ids) + 1)]
        assert any(
            line.kind == "credits_applied"
            for line in Invoice.objects.get(tenant=world.tenants[4]).lines.all()
        )


READ_AHEAD = ["billing_subscription", "billing_planversion", "billing_price", "billing_pricetier",
              "billing_providerrate", "billing_appliedcoupon", "billing_billingprofile", "billing_taxrate"]  # fmt: skip


def test_the_catalogue_and_the_usage_are_read_once_per_batch_whatever_its_size(world):
    def statements(tenant_ids: list[int]) -> tuple[dict[str, int], int]:
        """Reads of each catalogue table and of the rollups by a batch, and all its statements."""
        with transaction.atomic(), CaptureQueriesContext(connection) as captured:
            invoice_batches.invoice_batch(MARCH, tenant_ids, finalize=True, force=True, now=NOW)
            transaction.set_rollback(True)
        reads = [q["sql"] for q in captured.captured_queries if q["sql"].lstrip().startswith("SELECT")]
        counts = {table: sum(f'FROM "{table}"' in sql for sql in reads) for table in READ_AHEAD}
        counts["usage_agentrollup"] = sum("usage_agentrollup" in sql for sql in reads)
        return counts, len(captured.captured_queries)

    few, few_total = statements(world.ids[1:3])  # one of them has a billing profile: tax rates are read
    every, every_total = statements(world.ids)

    # and once more per invoice finalized: are its plan versions locked yet, whom does it name (the parties)
    for table in ("billing_planversion", "billing_billingprofile"):
        assert every.pop(table) - few.pop(table) == len(world.ids) - 2
    assert few == every == dict.fromkeys(every, 1)
    per_tenant_now = (every_total - few_total) / (len(world.ids) - 2)
    with CaptureQueriesContext(connection) as before:
        per_tenant(world.ids, finalize=True)
    assert per_tenant_now < len(before.captured_queries) / len(world.ids)


def test_running_a_batch_again_changes_nothing_and_doubles_nothing(world):
    drafts = batched(world.ids, finalize=False)
    assert batched(world.ids, finalize=False) == drafts
    first = batched(world.ids, finalize=True)
    finalized_at = dict(Invoice.objects.values_list("pk", "finalized_at"))

    assert batched(world.ids, finalize=True) == first
    assert dict(Invoice.objects.values_list("pk", "finalized_at")) == finalized_at
    assert Invoice.objects.count() == len(world.ids)
    events = Event.objects.filter(type__startswith="invoice.")
    assert sorted(events.values_list("type", flat=True)) == sorted(
        ["invoice.created"] * len(world.ids) + ["invoice.finalized"] * len(world.ids)
    )


def test_a_tenant_that_fails_does_not_stop_its_batch_and_a_rerun_completes_it_without_gaps(world, caplog):
    broken = world.tenants[1]
    type(broken).objects.filter(pk=broken.pk).update(timezone="Mars/Olympus_Mons")

    with caplog.at_level(logging.ERROR, logger="billing.invoice_batches"):
        outcome = invoice_batches.invoice_batch(MARCH, world.ids, finalize=True, force=True, now=NOW)

    assert outcome.failed == [broken.pk]
    assert f"tenant {broken.pk} failed" in caplog.text
    assert not Invoice.objects.filter(tenant=broken).exists()  # its transaction rolled back whole
    others = set(world.ids) - {broken.pk}
    assert set(Invoice.objects.filter(status="open").values_list("tenant_id", flat=True)) == others
    before = {i.pk: (i.number, i.finalized_at) for i in Invoice.objects.all()}

    type(broken).objects.filter(pk=broken.pk).update(timezone="Asia/Kolkata")
    again = invoice_batches.invoice_batch(MARCH, world.ids, finalize=True, force=True, now=NOW)

    assert again.failed == [] and len(again.invoices) == len(world.ids)
    assert {i.pk: (i.number, i.finalized_at) for i in Invoice.objects.filter(pk__in=before)} == before
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"ML-2026-{n:06d}" for n in range(1, len(world.ids) + 1)]


def test_the_task_retries_only_the_tenants_that_failed(world, caplog):
    broken = world.tenants[3]
    type(broken).objects.filter(pk=broken.pk).update(timezone="Nowhere/Nothing")

    with caplog.at_level(logging.ERROR, logger="billing.invoice_batches"):
        result = tasks.invoice_batch.apply(args=[MARCH.isoformat(), world.ids, True, True]).get()

    # the first run invoiced the others; each of the retries ran the broken tenant alone
    assert result == {"invoices": 0, "failed": [broken.pk]}
    assert caplog.text.count(f"tenant {broken.pk} failed") == 1 + tasks.RETRIES
    assert Invoice.objects.filter(status="open").count() == len(world.ids) - 1


def test_the_beat_fans_out_batches_that_draft_then_finalize_every_tenant(world, eager_tasks, monkeypatch):
    monkeypatch.setattr(invoice_batches, "BATCH_SIZE", 2)
    monkeypatch.setattr(invoicing.timezone, "now", lambda: NOW)

    tasks.refresh_drafts()
    assert set(
        Invoice.objects.filter(period_start=MARCH, status="draft").values_list("tenant_id", flat=True)
    ) == set(world.ids)
    tasks.finalize_due_invoices()

    assert Invoice.objects.filter(period_start=MARCH, status="open").count() == len(world.ids)


def test_pairs_become_batches_of_one_period_in_tenant_order():
    pairs = [(5, MARCH), (1, MARCH), (3, APRIL), (2, MARCH), (1, MARCH)]

    assert invoice_batches.batches(pairs, size=2) == [(MARCH, [1, 2]), (MARCH, [5]), (APRIL, [3])]


@pytest.mark.slow
def test_batches_through_a_real_worker_finalize_every_tenant_as_priced(celery_worker):
    agents = [
        AgentFactory(tenant=TenantFactory(timezone=zone)) for zone in ("UTC", "Asia/Kolkata", "Europe/Berlin")
    ]
    plan = make_plan()
    for n, agent in enumerate(agents):
        subscribe(agent.tenant, plan)
        store(
            agent,
            datetime(2026, 3, 2 + n, tzinfo=UTC),
            {"llm_input_text_tokens": 1_000_000 * (n + 1)},
            f"e{n}",
        )
    priced = {a.tenant_id: period_pricing.price_period(a.tenant, MARCH, APRIL).total for a in agents}
    pairs = [(a.tenant_id, MARCH) for a in agents]

    results = [r.get(timeout=60) for r in tasks.queue_batches(pairs, finalize=True, force=True, size=2)]
    again = [r.get(timeout=60) for r in tasks.queue_batches(pairs, finalize=True, force=True, size=2)]

    assert results == again == [{"invoices": 2, "failed": []}, {"invoices": 1, "failed": []}]
    invoices = Invoice.objects.filter(period_start=MARCH)
    assert {i.tenant_id: i.total for i in invoices} == priced and {i.status for i in invoices} == {"open"}
    assert sorted(i.number for i in invoices) == [f"ML-2026-{n:06d}" for n in (1, 2, 3)]
