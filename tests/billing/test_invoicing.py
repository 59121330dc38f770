"""Invoices from usage (DESIGN §5, §6): amounts, idempotency, finalization, late usage, plan changes."""

import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from billing import invoicing, period_pricing, tasks
from billing.models import Invoice, InvoiceLine, InvoiceNumberSequence, PlanVersion, Subscription
from tests.billing.builders import line_tuples, make_plan, store, store_stt, store_tts, subscribe
from tests.factories import AgentFactory, TenantFactory

MARCH = date(2026, 3, 1)
APRIL = date(2026, 4, 1)


def at(day: date, hour=12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def billed_agent(db):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    subscribe(agent.tenant, make_plan())
    return agent


def amounts(invoice) -> dict[str, Decimal]:
    return {line.description: line.amount for line in invoice.lines.all()}


@pytest.mark.django_db
def test_invoice_prices_the_periods_usage_line_by_line(billed_agent):
    store(
        billed_agent,
        at(date(2026, 3, 2)),
        {"llm_input_text_tokens": 2_000_000, "llm_output_text_tokens": 300_000},
        "e1",
    )
    store(billed_agent, at(date(2026, 3, 30)), {"llm_input_text_tokens": 1_000_000}, "e2")
    store_stt(billed_agent, at(date(2026, 3, 9)), "118.78", "e3")
    store_tts(billed_agent, at(date(2026, 3, 9)), 943_000, "e4")
    store(billed_agent, at(date(2026, 4, 1)), {"llm_input_text_tokens": 5_000_000}, "next-month")

    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)

    # 3M × $0.30/M, 0.3M × $1.20/M, 118.78 s × $0.012/60 s, TTS graduated after 100 free chars:
    # 500 × $0.10/1k + 942,400 × $0.05/1k
    assert amounts(invoice) == {
        "Base fee": Decimal("49.00"),
        "llm_input_text_tokens: api.openai.com gpt-4o-mini": Decimal("0.90"),
        "llm_output_text_tokens: api.openai.com gpt-4o-mini": Decimal("0.36"),
        "stt_audio_seconds: Deepgram nova-3": Decimal("0.02"),
        "tts_characters: Cartesia sonic-3": Decimal("47.17"),
    }
    assert invoice.total == sum(amounts(invoice).values()) == Decimal("97.45")
    assert invoice.status == "draft" and invoice.number is None and invoice.unmatched == []
    tts = invoice.lines.get(meter="tts_characters")
    assert (tts.quantity, tts.allowance, tts.billable_quantity) == (943_000, 100, 942_900)


@pytest.mark.django_db
def test_usage_no_price_matches_is_reported_on_the_invoice(billed_agent):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_audio_tokens": 700}, "e1", model="gpt-realtime")

    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)

    assert invoice.unmatched == [
        {
            "meter": "llm_input_audio_tokens",
            "provider": "api.openai.com",
            "model": "gpt-realtime",
            "quantity": "700.000000",
            "reason": "no_price",
            "segment_start": "2026-03-01",
            "segment_end": "2026-04-01",
        }
    ]


@pytest.mark.django_db
def test_periods_are_calendar_months_in_the_tenants_time_zone(db):
    agent = AgentFactory(tenant=TenantFactory(timezone="Asia/Kolkata"))
    subscribe(agent.tenant, make_plan())
    # 2026-03-31 18:29 UTC is 23:59 on March 31st in Kolkata; 18:31 UTC is already April 1st there
    store(agent, datetime(2026, 3, 31, 18, 29, tzinfo=UTC), {"llm_input_text_tokens": 1_000_000}, "march")
    store(agent, datetime(2026, 3, 31, 18, 31, tzinfo=UTC), {"llm_input_text_tokens": 3_000_000}, "april")

    march = invoicing.generate_invoice(agent.tenant_id, MARCH)
    april = invoicing.generate_invoice(agent.tenant_id, APRIL)

    assert march.lines.get(meter="llm_input_text_tokens").quantity == 1_000_000
    assert april.lines.get(meter="llm_input_text_tokens").quantity == 3_000_000


@pytest.mark.django_db
def test_generating_twice_gives_the_same_invoice_and_no_duplicates(billed_agent):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_text_tokens": 1_234_567}, "e1")
    first = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    before = line_tuples(first)

    second = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)

    assert second.pk == first.pk and line_tuples(second) == before
    assert Invoice.objects.count() == 1


@pytest.mark.django_db
def test_a_generation_failing_half_way_changes_nothing_and_a_rerun_completes_it(billed_agent, monkeypatch):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_text_tokens": 1_000_000}, "e1")
    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    before = line_tuples(invoice)
    store(billed_agent, at(date(2026, 3, 3)), {"llm_input_text_tokens": 2_000_000}, "e2")

    def crash(*args, **kwargs):  # the old lines are already deleted when this runs
        raise ConnectionError("worker lost its database half way")

    monkeypatch.setattr(InvoiceLine.objects, "bulk_create", crash)
    with pytest.raises(ConnectionError):
        invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    assert line_tuples(invoice) == before
    monkeypatch.undo()

    rerun = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    assert rerun.lines.get(meter="llm_input_text_tokens").quantity == 3_000_000


@pytest.mark.django_db
def test_finalization_snapshots_numbers_gaplessly_and_is_idempotent(billed_agent, monkeypatch):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_text_tokens": 1_000_000}, "e1")
    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    now = datetime(2026, 4, 2, 1, tzinfo=UTC)

    original_save = Invoice.save

    def crash_after_numbering(self, *args, **kwargs):
        if self.number:
            raise ConnectionError("killed after taking a number")
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(Invoice, "save", crash_after_numbering)
    with pytest.raises(ConnectionError):
        invoicing.finalize_invoice(invoice.pk, now=now)
    monkeypatch.undo()
    assert InvoiceNumberSequence.objects.filter(last_number__gt=0).count() == 0  # rolled back: no gap

    final = invoicing.finalize_invoice(invoice.pk, now=now)
    again = invoicing.finalize_invoice(invoice.pk, now=now + timedelta(days=3))

    assert final.number == again.number == "ML-2026-000001"
    assert final.status == again.status == "open"
    assert line_tuples(again) == line_tuples(final)
    assert PlanVersion.objects.get().is_locked


@pytest.mark.django_db
def test_a_period_is_finalized_only_after_its_grace_period(billed_agent):
    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    assert invoicing.due_invoice_ids(datetime(2026, 4, 1, 23, 59, tzinfo=UTC)) == []
    assert invoicing.due_invoice_ids(datetime(2026, 4, 2, 0, 0, tzinfo=UTC)) == [invoice.pk]
    with pytest.raises(ValueError, match="not due"):
        invoicing.finalize_invoice(invoice.pk, now=datetime(2026, 4, 1, 12, tzinfo=UTC))
    assert invoicing.finalize_invoice(invoice.pk, now=datetime(2026, 4, 1, 12, tzinfo=UTC), force=True).number


@pytest.mark.django_db
def test_finalized_invoices_and_their_lines_never_change(billed_agent):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_text_tokens": 1_000_000}, "e1")
    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    invoice = invoicing.finalize_invoice(invoice.pk, force=True)

    for attempt in (
        lambda: Invoice.objects.filter(pk=invoice.pk).update(total=Decimal("1.00")),
        lambda: InvoiceLine.objects.filter(invoice=invoice).update(amount=Decimal(0)),
        lambda: InvoiceLine.objects.filter(invoice=invoice).delete(),
        lambda: Invoice.objects.filter(pk=invoice.pk).delete(),
        lambda: Invoice.objects.filter(pk=invoice.pk).update(status="draft"),
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            attempt()

    Invoice.objects.filter(pk=invoice.pk).update(status="paid")
    with pytest.raises(IntegrityError), transaction.atomic():
        Invoice.objects.filter(pk=invoice.pk).update(status="open")
    assert invoicing.generate_invoice(billed_agent.tenant_id, MARCH).status == "paid"


@pytest.mark.django_db
def test_late_usage_is_billed_once_as_an_adjustment_on_the_next_invoice(billed_agent):
    tenant_id = billed_agent.tenant_id
    store_tts(billed_agent, at(date(2026, 3, 20)), 400, "e1")
    march = invoicing.finalize_invoice(invoicing.generate_invoice(tenant_id, MARCH).pk, force=True)
    march_lines = line_tuples(march)

    # arrives on April 10th for March 28th (within the 35-day window), and crosses a tier boundary
    store_tts(billed_agent, at(date(2026, 3, 28)), 1000, "late")
    store_tts(billed_agent, at(date(2026, 4, 2)), 50, "april")
    april = invoicing.generate_invoice(tenant_id, APRIL)
    invoicing.generate_invoice(tenant_id, APRIL)  # refreshing the draft does not repeat the adjustment

    adjustment = april.lines.get(kind="adjustment")
    # March now: 1,400 chars − 100 free = 1,300: 500 × $0.10/1k + 800 × $0.05/1k = $0.09; billed $0.03
    assert adjustment.description.startswith("Late usage for March 2026")
    assert (adjustment.quantity, adjustment.amount, adjustment.adjusted_period_start) == (
        1000,
        Decimal("0.06"),
        MARCH,
    )
    assert line_tuples(march) == march_lines
    assert period_pricing.price_period(march.tenant, MARCH, APRIL).total == march.total + adjustment.amount

    april = invoicing.finalize_invoice(april.pk, force=True)
    may = invoicing.generate_invoice(tenant_id, date(2026, 5, 1))
    assert not may.lines.filter(kind="adjustment").exists()


@pytest.mark.django_db
def test_a_plan_change_mid_period_splits_it_and_prorates_the_fees(db):
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    cheap, dear = make_plan("cheap", base_fee="31.00"), make_plan("dear", base_fee="62.00")
    for plan, price in ((cheap, "0.30"), (dear, "0.60")):
        plan.versions.get().prices.filter(meter_id="llm_input_text_tokens").update(unit_amount=Decimal(price))
    subscribe(agent.tenant, cheap, starts_on=date(2026, 1, 1), ends_on=date(2026, 3, 11))
    subscribe(agent.tenant, dear, starts_on=date(2026, 3, 11))
    store(agent, at(date(2026, 3, 10), hour=23), {"llm_input_text_tokens": 1_000_000}, "before")
    store(agent, at(date(2026, 3, 11), hour=0), {"llm_input_text_tokens": 1_000_000}, "after")

    invoice = invoicing.generate_invoice(agent.tenant_id, MARCH)

    by_segment = {(line.segment_start, line.kind): line for line in invoice.lines.all()}
    assert by_segment[(MARCH, "base_fee")].amount == Decimal("10.00")  # 10/31 of $31
    assert by_segment[(date(2026, 3, 11), "base_fee")].amount == Decimal("42.00")  # 21/31 of $62
    assert by_segment[(MARCH, "usage")].amount == Decimal("0.30")
    assert by_segment[(date(2026, 3, 11), "usage")].amount == Decimal("0.60")
    assert {line.plan_version.plan for line in invoice.lines.all()} == {cheap, dear}


@pytest.mark.django_db
def test_a_new_plan_version_applies_from_its_date(billed_agent):
    plan = Subscription.objects.get(tenant=billed_agent.tenant).plan
    v2 = PlanVersion.objects.create(
        plan=plan, version=2, effective_from=date(2026, 3, 16), base_fee=Decimal("0")
    )
    store(billed_agent, at(date(2026, 3, 20)), {"llm_input_text_tokens": 1_000_000}, "e1")

    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)

    assert invoice.lines.get(kind="base_fee").amount == Decimal("23.71")  # 15/31 of $49.00 (v1)
    assert invoice.lines.get(kind="base_fee").plan_version.version == 1
    assert invoice.unmatched[0]["reason"] == "no_price" and invoice.unmatched[0]["segment_start"] == str(
        v2.effective_from
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_finalizations_take_distinct_gapless_numbers():
    invoices = []
    for n in range(6):
        agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
        subscribe(agent.tenant, make_plan(f"plan-{n}"))
        invoices.append(invoicing.generate_invoice(agent.tenant_id, MARCH).pk)
    barrier = threading.Barrier(len(invoices))

    def finalize(pk):
        barrier.wait()
        try:
            invoicing.finalize_invoice(pk, force=True)
        finally:
            connection.close()

    threads = [threading.Thread(target=finalize, args=(pk,)) for pk in invoices + invoices]
    barrier = threading.Barrier(len(threads))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    year = datetime.now(UTC).year
    assert numbers == [f"ML-{year}-{n:06d}" for n in range(1, 7)]


@pytest.mark.django_db(transaction=True)
def test_a_finalization_killed_mid_transaction_leaves_no_trace_and_a_rerun_matches(billed_agent):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_text_tokens": 1_000_000}, "e1")
    invoice = invoicing.generate_invoice(billed_agent.tenant_id, MARCH)
    expected_lines = line_tuples(invoice)
    db = connection.settings_dict
    env = {
        "DATABASE_URL": f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT'] or 5432}/{db['NAME']}",
        "DEBUG": "1",
        "SECRET_KEY": "x",
        "PATH": "/usr/bin:/bin",
    }
    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup()\n"
        "from billing import invoicing; print('started', flush=True)\n"
        f"invoicing.finalize_invoice({invoice.pk}, force=True)\n"
    )
    # Hold the sequence row so the child blocks inside finalize_invoice, after rewriting the lines
    with transaction.atomic():
        InvoiceNumberSequence.objects.get_or_create(year=datetime.now(UTC).year)
    lock = connection.cursor()
    lock.execute("BEGIN; SELECT * FROM billing_invoicenumbersequence FOR UPDATE")
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "started"
    for _ in range(100):  # wait until the child is blocked on our lock
        lock.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        if lock.fetchone()[0]:
            break
        threading.Event().wait(0.1)
    child.kill()
    child.wait()
    lock.execute("COMMIT")

    invoice.refresh_from_db()
    assert invoice.status == "draft" and invoice.number is None
    final = invoicing.finalize_invoice(invoice.pk, force=True)
    assert final.number.endswith("000001") and line_tuples(final) == expected_lines


@pytest.mark.slow
def test_generation_and_finalization_through_a_real_worker_match_direct_calls(celery_worker, billed_agent):
    store(billed_agent, at(date(2026, 3, 2)), {"llm_input_text_tokens": 2_000_000}, "e1")
    direct = period_pricing.price_period(billed_agent.tenant, MARCH, APRIL)

    invoice_id = tasks.generate_invoice.delay(billed_agent.tenant_id, MARCH.isoformat()).get(timeout=30)
    tasks.generate_invoice.delay(billed_agent.tenant_id, MARCH.isoformat()).get(timeout=30)
    number = tasks.finalize_invoice.delay(invoice_id).get(timeout=30)
    again = tasks.finalize_invoice.delay(invoice_id).get(timeout=30)

    invoice = Invoice.objects.get(pk=invoice_id)
    assert number == again == invoice.number and invoice.status == "open"
    assert invoice.total == direct.total and Invoice.objects.count() == 1


@pytest.mark.django_db
def test_beat_keeps_drafts_for_subscribed_tenants_only(billed_agent):
    TenantFactory()  # no subscription: nothing to bill
    now = datetime(2026, 3, 15, tzinfo=UTC)
    Subscription.objects.update(starts_on=date(2026, 2, 1))

    pairs = invoicing.tenants_to_bill(now)

    assert pairs == [(billed_agent.tenant_id, MARCH), (billed_agent.tenant_id, date(2026, 2, 1))]
