"""The ledger, the invoices it pays and the available balance agree to the cent (issue 15, decision 018).

A hypothesis state machine runs random sequences of grants, staff reversals and adjustments, usage in the
previous and the current period (ingested, so the rollups are real), the previous period's invoice made and
finalized, expiry runs and holds, on one fresh tenant per example (inside a savepoint rolled back at its end).
After every step it compares what the code reports with a model kept here in plain Decimal arithmetic: the
ledger by kind and per grant, the balance's three parts, and the finalized invoice's credit line, total and
per-grant applications. The plan is a base fee, a fee per active agent and a price per TTS character, on a
subscription from the first day of the previous month, so both periods are whole and the previous one is
invoiced (the beat bills it) until it is finalized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from billing import credits, invoicing, periods
from billing.models import CreditGrant, Invoice, InvoiceLine, LedgerEntry
from spend import control
from spend.models import Hold, SpendPolicy
from tests.billing.builders import make_plan, store, subscribe
from tests.factories import AgentFactory, TenantFactory

ZERO = Decimal(0)
CENT = Decimal("0.01")
SESSIONS = ("call-1", "call-2", "call-3")
HOLD_TTL = timedelta(minutes=15)


def money(amount: Decimal) -> Decimal:
    """Half-up to the cent: the invoice's one rounding step per line."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def cents(count: int) -> Decimal:
    return Decimal(count) * CENT


@dataclass
class GrantModel:
    pk: int
    amount: Decimal
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    applied: Decimal = ZERO
    expired: Decimal = ZERO
    reversed: Decimal = ZERO
    adjusted: Decimal = ZERO  # signed

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.applied - self.expired - self.reversed + self.adjusted

    def in_effect(self, at: datetime) -> bool:
        return self.effective_at <= at

    def is_expired(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= at


@dataclass
class InvoiceModel:
    pk: int
    charged: Decimal  # the total before credit
    applications: list[tuple[int, Decimal]]  # (grant, amount applied), in the order credit is used

    @property
    def applied(self) -> Decimal:
        return sum((amount for _, amount in self.applications), ZERO)


@dataclass
class Model:
    """What the code should report, worked out with plain Decimals from the operations alone."""

    base_fee: Decimal
    agent_fee: Decimal
    unit_price: Decimal  # per TTS character
    policy: str = SpendPolicy.Policy.POSTPAID
    overdraft: Decimal = ZERO
    grants: dict[int, GrantModel] = field(default_factory=dict)
    characters: dict[str, int] = field(default_factory=lambda: {"previous": 0, "current": 0})
    invoice: InvoiceModel | None = None  # the previous period's, once finalized
    holds: dict[str, Decimal] = field(default_factory=dict)  # session → amount of its active hold

    def price(self, period: str) -> Decimal:
        """The period's invoice before credit: a line per fee and one usage line, each rounded once."""
        used = self.characters[period]
        agent_fee = money(self.agent_fee) if used else ZERO  # one agent, counted when it reported usage
        return money(self.base_fee) + agent_fee + money(used * self.unit_price)

    def unbilled(self) -> Decimal:
        """What the invoices not yet finalized will charge: the current period's, which also carries the late
        usage of a finalized previous period (the difference to what that invoice charged), and the previous
        period's while it is not finalized."""
        previous = self.price("previous")
        if self.invoice is not None:
            previous -= self.invoice.charged
        return self.price("current") + previous

    def held(self) -> Decimal:
        return sum(self.holds.values(), ZERO)

    def ledger(self, at: datetime) -> Decimal:
        """Σ grants − Σ applications − Σ expiries − Σ reversals ± adjustments, of the grants in effect."""
        counted = [g for g in self.grants.values() if g.in_effect(at)]
        return (
            sum((g.amount for g in counted), ZERO)
            - sum((g.applied for g in counted), ZERO)
            - sum((g.expired for g in counted), ZERO)
            - sum((g.reversed for g in counted), ZERO)
            + sum((g.adjusted for g in counted), ZERO)
        )

    def available(self, at: datetime) -> Decimal:
        return self.ledger(at) - self.unbilled() - self.held()

    def by_kind(self) -> dict[str, Decimal]:
        """Σ of the entries of each kind, signed as the ledger stores them (every grant, in effect or not)."""
        every = self.grants.values()
        totals = {
            LedgerEntry.Kind.GRANT: sum((g.amount for g in every), ZERO),
            LedgerEntry.Kind.APPLICATION: -sum((g.applied for g in every), ZERO),
            LedgerEntry.Kind.EXPIRY: -sum((g.expired for g in every), ZERO),
            LedgerEntry.Kind.REVERSAL: -sum((g.reversed for g in every), ZERO),
            LedgerEntry.Kind.ADJUSTMENT: sum((g.adjusted for g in every), ZERO),
        }
        return {kind: total for kind, total in totals.items() if total}

    def expire(self, at: datetime) -> int:
        """What is left of every grant whose expiry has passed leaves the balance as an expiry entry."""
        posted = 0
        for each in self.grants.values():
            if each.is_expired(at) and each.remaining > 0:
                each.expired += each.remaining
                posted += 1
        return posted

    def usable(self, at: datetime) -> list[GrantModel]:
        """The grants that can pay an invoice at ``at``, in the order they are used: highest priority, then the
        soonest expiry (none last), then the oldest."""
        found = [
            g for g in self.grants.values() if g.in_effect(at) and not g.is_expired(at) and g.remaining > 0
        ]
        return sorted(found, key=lambda g: (-g.priority, g.expires_at is None, g.expires_at or at, g.pk))

    def pay(self, invoice_pk: int, charged: Decimal, at: datetime) -> InvoiceModel:
        due, applications = charged, []
        for each in self.usable(at):
            if due <= 0:
                break
            take = min(each.remaining, due)
            each.applied += take
            due -= take
            applications.append((each.pk, take))
        self.invoice = InvoiceModel(invoice_pk, charged, applications)
        return self.invoice


GRANTS = st.fixed_dictionaries(
    {
        "amount_cents": st.one_of(st.integers(1, 2_000), st.integers(1, 40_000)),
        "source": st.sampled_from(CreditGrant.Source.values),
        "priority": st.integers(-1, 2),
        "effective": st.sampled_from(["now", "now", "now", "future"]),
        "expiry": st.sampled_from([None, None, "past", "soon", "later", "before it takes effect"]),
    }
)


class LedgerMachine(RuleBasedStateMachine):
    grants = Bundle("grants")

    def __init__(self):
        super().__init__()
        self.savepoint = transaction.savepoint()
        self.model: Model | None = None
        self.events = 0
        self.hold_ids: dict[str, int] = {}  # session → its latest hold
        self.usable_at_finalization = ZERO

    def teardown(self):
        transaction.savepoint_rollback(self.savepoint)

    @initialize(
        target=grants,
        base_fee=st.sampled_from(["0", "10.00", "4.99"]),
        agent_fee=st.sampled_from(["0", "2.50"]),
        unit_price=st.sampled_from(["0.01", "0.0035", "0.000125"]),
        characters_last_month=st.integers(1, 20_000),
        policy=st.sampled_from(SpendPolicy.Policy.values),
        opening_grants=st.lists(GRANTS, min_size=1, max_size=4),
    )
    def open_account(self, base_fee, agent_fee, unit_price, characters_last_month, policy, opening_grants):
        """A tenant that used the service last month (without any usage there, the balance leaves out last
        month's fees: see the test below), on a spend policy, with some credit."""
        self.tenant = TenantFactory(timezone="UTC")
        self.agent = AgentFactory(tenant=self.tenant)
        self.current, _ = invoicing.current_period(self.tenant)
        self.previous = periods.previous_month(self.current)
        prices = [{"meter_id": "tts_characters", "unit_amount": Decimal(unit_price), "unit_size": Decimal(1)}]
        plan = make_plan(
            base_fee=base_fee, agent_fee=agent_fee, effective_from=date(2020, 1, 1), prices=prices
        )
        subscribe(self.tenant, plan, starts_on=self.previous)
        self.model = Model(Decimal(base_fee), Decimal(agent_fee), Decimal(unit_price))
        self.set_policy(policy, ZERO)
        self.use("previous", characters_last_month)
        return multiple(*(pk for pk in map(self._grant, opening_grants) if pk is not None))

    def is_open(self) -> bool:
        return self.model is not None

    @rule(target=grants, spec=GRANTS)
    def grant(self, spec):
        made = self._grant(spec)
        return multiple() if made is None else made

    def _grant(self, spec: dict) -> int | None:
        """A grant as drawn: effective now or in 2 days, with no expiry or one in 20 or 60 days; or in effect
        since 40 days ago and expired yesterday; or refused, expiring before it takes effect (None)."""
        now, amount = timezone.now(), cents(spec["amount_cents"])
        effective_at = {"now": None, "future": now + timedelta(days=2)}[spec["effective"]]
        expires_at = {"soon": now + timedelta(days=20), "later": now + timedelta(days=60)}.get(spec["expiry"])
        if spec["expiry"] == "past":
            effective_at, expires_at = now - timedelta(days=40), now - timedelta(days=1)
        given = {
            "source": spec["source"],
            "reason": "property test",
            "priority": spec["priority"],
            "effective_at": effective_at,
            "expires_at": expires_at,
        }
        if spec["expiry"] == "before it takes effect":
            with pytest.raises(credits.CreditError, match="expires_at"):
                credits.grant(self.tenant, amount, **{**given, "expires_at": effective_at or now})
            return None
        made = credits.grant(self.tenant, amount, **given)
        self.model.grants[made.pk] = GrantModel(
            made.pk, amount, spec["priority"], made.effective_at, made.expires_at
        )
        return made.pk

    @rule(grant=grants, how=st.sampled_from(["all", "part", "over"]), percent=st.integers(1, 99))
    def reverse(self, grant, how, percent):
        modelled = self.model.grants[grant]
        left = modelled.remaining
        amount = {"all": None, "part": money(left * percent / 100), "over": left + CENT}[how]
        taken = left if amount is None else amount
        if taken <= 0 or taken > left:
            with pytest.raises(credits.CreditError):
                credits.reverse(CreditGrant.objects.get(pk=grant), amount, reason="taken back")
            return
        entry = credits.reverse(CreditGrant.objects.get(pk=grant), amount, reason="taken back")
        assert (entry.kind, entry.amount) == (LedgerEntry.Kind.REVERSAL, -taken)
        modelled.reversed += taken

    @rule(
        grant=grants,
        change=st.one_of(
            st.integers(-40_000, 40_000).filter(bool).map(cents),
            st.sampled_from(["minus all", "minus all and a cent"]),
        ),
    )
    def adjust(self, grant, change):
        modelled = self.model.grants[grant]
        if change == "minus all":
            change = -modelled.remaining
        elif change == "minus all and a cent":
            change = -modelled.remaining - CENT
        if change == 0 or modelled.remaining + change < 0:
            with pytest.raises(credits.CreditError):
                credits.adjust(CreditGrant.objects.get(pk=grant), change, reason="corrected")
            return
        if change > 0 and (modelled.expired or modelled.is_expired(timezone.now())):
            # credit added to an expired grant: refusing it is as right as keeping it usable
            try:
                entry = credits.adjust(CreditGrant.objects.get(pk=grant), change, reason="corrected")
            except credits.CreditError:
                return
        else:
            entry = credits.adjust(CreditGrant.objects.get(pk=grant), change, reason="corrected")
        assert (entry.kind, entry.amount) == (LedgerEntry.Kind.ADJUSTMENT, change)
        modelled.adjusted += change

    @rule(period=st.sampled_from(["previous", "current"]), characters=st.integers(1, 20_000))
    def use(self, period, characters):
        """A TTS event in the period: the last day of the previous month (late, once it is finalized: events
        are accepted 35 days back), or the first minutes of the current one."""
        self.events += 1
        start = periods.local_midnight(self.current, self.tenant.timezone)
        offset = timedelta(seconds=self.events)
        when = start - timedelta(hours=12) + offset if period == "previous" else start + offset
        stored = store(
            self.agent,
            when,
            {"tts_characters": characters},
            f"e-{self.events}",
            provider="Cartesia",
            model="sonic-3",
            session_id="talk",
        )
        assert stored.accepted == 1
        self.model.characters[period] += characters

    @rule()
    def finalize_previous(self):
        """Make and finalize the previous period's invoice; once it is final, finalizing again changes nothing."""
        if self.model.invoice is not None:
            again = invoicing.finalize_invoice(self.model.invoice.pk, now=timezone.now(), force=True)
            assert again.total == self.model.invoice.charged - self.model.invoice.applied
            return
        draft = invoicing.generate_invoice(self.tenant.pk, self.previous)
        charged = self.model.price("previous")
        assert draft.total == charged, "the draft charges what the balance counted as unbilled"
        at = timezone.now()
        self.model.expire(at)
        self.usable_at_finalization = sum((g.remaining for g in self.model.usable(at)), ZERO)
        self.model.pay(draft.pk, charged, at)
        finalized = invoicing.finalize_invoice(draft.pk, now=at, force=True)
        assert finalized.status == Invoice.Status.OPEN and finalized.number

    @rule()
    def refresh_drafts(self):
        """The beat's refresh: every draft says what the balance counts as unbilled for its period."""
        drafts = invoicing.refresh_drafts_for(self.tenant.pk)
        expected = {self.current: self.model.price("current")}
        if self.model.invoice is None:
            expected[self.previous] = self.model.price("previous")
        else:
            expected[self.current] += self.model.price("previous") - self.model.invoice.charged
        assert {d.period_start: d.total for d in drafts} == expected

    @rule(days_later=st.sampled_from([0, 30, 90]))
    def expiry_run(self, days_later):
        at = timezone.now() + timedelta(days=days_later)
        posted = credits.expire_due(self.tenant, at)
        assert posted == self.model.expire(at), "an expiry for what is left of every grant past its expiry"

    @rule(
        policy=st.sampled_from(SpendPolicy.Policy.values), overdraft=st.sampled_from([ZERO, Decimal("5.00")])
    )
    def set_policy(self, policy, overdraft):
        SpendPolicy.objects.update_or_create(
            tenant=self.tenant, defaults={"policy": policy, "overdraft": overdraft}
        )
        self.model.policy, self.model.overdraft = policy, overdraft

    @rule(session=st.sampled_from(SESSIONS), amount_cents=st.integers(1, 40_000))
    def authorize(self, session, amount_cents):
        amount, at = cents(amount_cents), timezone.now()
        self.model.expire(at)
        available = self.model.available(at)
        current = self.model.holds.get(session)
        required = amount if current is None else max(amount - current, ZERO)
        hard = self.model.policy == SpendPolicy.Policy.PREPAID_HARD
        if hard and required > 0 and available - required < -self.model.overdraft:
            with pytest.raises(control.Refused) as refused:
                control.authorize(self.tenant, self.agent, session, amount, HOLD_TTL)
            assert (refused.value.available, refused.value.required) == (available, required)
            return
        hold, after = control.authorize(self.tenant, self.agent, session, amount, HOLD_TTL)
        assert after == available - required, "the available balance after the hold"
        if current is not None:
            assert hold.pk == self.hold_ids[session], "a call has one hold"
        self.hold_ids[session] = hold.pk
        self.model.holds[session] = max(amount, current or ZERO)

    @rule(session=st.sampled_from(SESSIONS), how=st.sampled_from(["released", "lapsed"]))
    def end_hold(self, session, how):
        """The session's latest hold is released (idempotent: it may have ended already) or its TTL passes."""
        if session not in self.hold_ids:
            return
        if how == "released":
            control.release(Hold.objects.get(pk=self.hold_ids[session]))
        else:
            lapsed = timezone.now() - timedelta(seconds=1)
            Hold.objects.filter(pk=self.hold_ids[session], expires_at__gt=lapsed).update(expires_at=lapsed)
        self.model.holds.pop(session, None)

    @precondition(is_open)
    @invariant()
    def the_ledger_and_the_balance_agree_with_the_model(self):
        at = timezone.now()
        got = control.balance(self.tenant, at)  # posts the expiries due first, as every read does
        entries = LedgerEntry.objects.for_tenant(self.tenant)
        per_grant = dict(entries.values_list("grant").annotate(left=Sum("amount")))
        # whatever the ledger balance counts, an invoice can use: no grant past its expiry still holds value
        for pk, modelled in self.model.grants.items():
            if modelled.in_effect(at) and modelled.is_expired(at):
                assert per_grant[pk] == 0, (
                    f"grant {pk} expired at {modelled.expires_at:%F} but still counts {per_grant[pk]}"
                )
        self.model.expire(at)
        assert got.ledger_balance == self.model.ledger(at), (
            "grants − applications − expiries − reversals ± adjustments"
        )
        by_kind = entries.values_list("kind").annotate(total=Sum("amount"))
        assert {kind: total for kind, total in by_kind if total} == self.model.by_kind()
        for pk, modelled in self.model.grants.items():
            assert per_grant[pk] == modelled.remaining
            assert per_grant[pk] >= 0, f"grant {pk} is worth {per_grant[pk]}"
        assert got.held == self.model.held()
        assert got.unbilled_usage == self.model.unbilled(), "what the invoices not yet final will charge"
        assert got.available == got.ledger_balance - got.unbilled_usage - got.held
        assert got.available == self.model.available(at)

    @precondition(lambda self: self.is_open() and self.model.invoice is not None)
    @invariant()
    def the_finalized_invoice_agrees_with_the_ledger(self):
        modelled = self.model.invoice
        invoice = Invoice.objects.get(pk=modelled.pk)
        lines = list(invoice.lines.order_by("position"))
        credit_lines = [line for line in lines if line.kind == InvoiceLine.Kind.CREDITS_APPLIED]
        applications = LedgerEntry.objects.filter(invoice=invoice, kind=LedgerEntry.Kind.APPLICATION)
        assert [(e.grant_id, -e.amount) for e in applications.order_by("id")] == modelled.applications
        if modelled.applied:
            assert credit_lines == [lines[-1]], "one credit line, last"
            assert credit_lines[0].amount == -modelled.applied == applications.aggregate(s=Sum("amount"))["s"]
        else:
            assert credit_lines == []
        assert sum((line.amount for line in lines if line not in credit_lines), ZERO) == modelled.charged
        assert invoice.total == modelled.charged - modelled.applied
        assert invoice.total == max(ZERO, modelled.charged - self.usable_at_finalization)
        assert invoice.total >= 0


def test_the_ledger_the_invoices_and_the_balance_agree_to_the_cent(db):
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )


# What the machine found, each as its smallest example.
PER_CHARACTER = [{"meter_id": "tts_characters", "unit_amount": CENT, "unit_size": Decimal(1)}]


def last_month_of(tenant) -> tuple[date, date]:
    current, _ = invoicing.current_period(tenant)
    return periods.previous_month(current), current


def tts(agent, when: datetime, characters: int, event_id: str) -> None:
    store(agent, when, {"tts_characters": characters}, event_id, provider="Cartesia", model="sonic-3")


def test_credit_that_paid_an_invoice_is_not_charged_again_on_the_next_one(agent):
    """Re-pricing a finalized period for late usage once took its "Prepaid credits applied" line for a group
    that no longer exists and charged it back on the next invoice."""
    tenant = agent.tenant
    previous, current = last_month_of(tenant)
    subscribe(tenant, make_plan(base_fee="10.00", prices=PER_CHARACTER), starts_on=previous)
    credits.grant(tenant, "4.00", source="purchased", reason="top-up")
    paid = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, previous).pk, force=True)
    assert paid.total == Decimal("6.00")

    following = invoicing.generate_invoice(tenant.pk, current)
    assert [(line.kind, line.amount) for line in following.lines.order_by("position")] == [
        ("base_fee", Decimal("10.00"))
    ]


def test_late_usage_of_a_finalized_period_counts_in_the_balance(agent):
    """Late usage of a finalized period is billed on the current invoice (billing.late_usage), so the balance's
    unbilled usage includes it."""
    tenant = agent.tenant
    previous, current = last_month_of(tenant)
    subscribe(tenant, make_plan(base_fee="0", prices=PER_CHARACTER), starts_on=previous)
    last_day = periods.local_midnight(current, tenant.timezone) - timedelta(hours=12)
    tts(agent, last_day, 100, "on-time")
    invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, previous).pk, force=True)
    tts(agent, last_day + timedelta(minutes=1), 50, "late")

    following = invoicing.generate_invoice(tenant.pk, current)
    assert following.total == Decimal("0.50")  # "Late usage for …": billed on the current period's invoice
    assert control.balance(tenant).unbilled_usage == following.total, "what the current invoice will charge"


def test_the_balance_counts_last_months_fees_before_its_invoice_is_final(tenant):
    """Last month had no usage, but its invoice charges the base fee all the same: finalizing it, with nothing
    else happening, moves the available balance by nothing."""
    previous, _ = last_month_of(tenant)
    subscribe(tenant, make_plan(base_fee="10.00", prices=PER_CHARACTER), starts_on=previous)
    credits.grant(tenant, "100.00", source="purchased", reason="top-up")
    before = control.balance(tenant)
    paid = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, previous).pk, force=True)
    assert paid.lines.get(kind="credits_applied").amount == Decimal("-10.00")
    assert control.balance(tenant).available == before.available


def test_credit_added_to_an_expired_grant_is_refused_or_usable(tenant):
    """An adjustment after a grant's expiry was posted is counted by the ledger balance, but no invoice can use
    it (expired grants do not pay, and the expiry is posted once per grant)."""
    previous, _ = last_month_of(tenant)
    subscribe(tenant, make_plan(base_fee="10.00", prices=PER_CHARACTER), starts_on=previous)
    now = timezone.now()
    expired = credits.grant(
        tenant,
        "5.00",
        source="promotional",
        reason="trial",
        effective_at=now - timedelta(days=40),
        expires_at=now - timedelta(days=1),
    )
    assert credits.ledger_balance(tenant) == 0  # the expiry is posted
    try:
        credits.adjust(expired, "3.00", reason="goodwill on an old grant")
    except credits.CreditError:
        return  # refused: as right as keeping it usable
    counted = credits.ledger_balance(tenant)
    paid = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, previous).pk, force=True)
    applied = -sum((line.amount for line in paid.lines.filter(kind="credits_applied")), ZERO)
    assert applied == min(counted, Decimal("10.00")), "the credit the balance counts pays the invoice"


def test_credit_cannot_be_added_to_a_grant_whose_expiry_was_posted(tenant):
    """An expiry run for a later time (the state machine's ``expiry_run``) posts a grant's expiry before its date
    has come by the clock; credit added afterwards would never expire (an expiry is posted once per grant), so
    it is refused like credit added to a grant past its date. A regression: the state machine once found it."""
    now = timezone.now()
    grant = credits.grant(
        tenant, "5.00", source="promotional", reason="trial", expires_at=now + timedelta(days=20)
    )
    assert credits.expire_due(tenant, now + timedelta(days=30)) == 1
    with pytest.raises(credits.CreditError, match="expired"):
        credits.adjust(grant, "3.00", reason="goodwill")
    assert credits.expire_due(tenant, now + timedelta(days=90)) == 0
    entries = LedgerEntry.objects.for_tenant(tenant).filter(grant=grant)
    assert sorted(entries.values_list("kind", "amount")) == [
        (LedgerEntry.Kind.EXPIRY, Decimal("-5.00")),
        (LedgerEntry.Kind.GRANT, Decimal("5.00")),
    ]
