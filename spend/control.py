"""Real-time spend control (DESIGN §13, issue 15, decision 018): the available balance and pre-call holds.

available = ledger balance (billing.credits) − unbilled usage − active holds, where unbilled usage is every
period not yet finalized priced now exactly as its invoice will price it (billing.period_pricing: tiers,
allowances, minimums and fees included; it reads the rollups, which the ingest transaction keeps, so a balance
read after an accepted batch includes it).

An authorization takes the tenant's ``SpendPolicy`` row ``FOR UPDATE`` before it sums the active holds and writes its
hold, so a tenant's authorizations run one at a time and never over-commit; reads and ingest do not wait on it.
Usage is a fact: nothing here ever refuses an event.

:func:`check` is the one place spend is watched (the beat every minute, and soon after ingest and
authorizations): the monthly budget's thresholds (spend.budgets), the prepaid balance's ``balance.low`` and
``balance.depleted`` (each announced once per fall), and auto-recharge (billing.topups; one in flight, paused
after a failed payment until the policy is saved again).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import credits, invoicing, late_usage, period_pricing, periods, selectors, topups
from billing.models import CallCost, Invoice, Subscription
from billing.pricing import round_money
from notifications import outbox
from spend import budgets
from spend.models import Budget, Hold, SpendPolicy
from tenants.models import Agent, Tenant
from usage.models import Session

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
DEFAULT_TTL = timedelta(minutes=15)
MAX_TTL = timedelta(hours=24)
RECENT_CALLS = timedelta(days=7)  # the window a tenant's own cost per second of session is taken from
RECENT_CALLS_LIMIT = 1000


@dataclass(frozen=True)
class Balance:
    currency: str
    ledger_balance: Decimal
    unbilled_usage: Decimal
    held: Decimal
    policy: str

    @property
    def available(self) -> Decimal:
        return self.ledger_balance - self.unbilled_usage - self.held


class Refused(Exception):
    """The tenant's policy refuses the hold (prepaid-hard, not enough available balance)."""

    def __init__(self, available: Decimal, required: Decimal, currency: str):
        super().__init__(f"{required} {currency} required, {available} available")
        self.available, self.required, self.currency = available, required, currency


class NoRateForDuration(Exception):
    """A hold asked by duration, but the tenant has no recent calls and its plan no expected cost per minute."""


def policy_of(tenant: Tenant) -> SpendPolicy:
    found = SpendPolicy.objects.filter(tenant=tenant).first()
    return found or SpendPolicy(tenant=tenant)


def unbilled_periods(tenant: Tenant, now: datetime | None = None) -> list:
    """The periods whose invoices are still to be finalized: every draft, and those the beat keeps a draft of
    (this period and, until it is finalized, the previous one), oldest first."""
    invoices = Invoice.objects.for_tenant(tenant)
    starts = set(invoices.filter(status=Invoice.Status.DRAFT).values_list("period_start", flat=True))
    starts.update(invoicing.periods_to_bill(tenant, now or timezone.now()))
    # a period finalized early (staff may force it) is billed: what arrives for it now is its late usage
    starts -= set(
        invoices.finalized().exclude(status=Invoice.Status.VOID).values_list("period_start", flat=True)
    )
    return sorted(starts)


# Per process, the last unbilled usage priced for each tenant, with the state it was priced in: the catalogue
# token, the tenant's generation (a new value in the very transaction that changes its rollups or invoices:
# billing.period_pricing.tenant_state), the current period and what else the price reads. A read whose state
# is the one cached prices nothing; a read after an accepted batch sees a new generation and prices again, so
# the balance stays read-your-writes (decision 018).
_UNBILLED: OrderedDict[int, tuple[tuple, Decimal]] = OrderedDict()
_UNBILLED_LOCK = threading.Lock()
CACHED_TENANTS = 4096


def unbilled_usage(
    tenant: Tenant, now: datetime | None = None, current: period_pricing.PricedPeriod | None = None
) -> Decimal:
    """What the invoices not yet finalized will charge, priced now exactly as they will be: each such period
    (:func:`unbilled_periods`) priced (fees, discounts and tax included), and the late usage of finalized
    periods that the next of them will carry as adjustments (once). ``current``: the current period already
    priced by the caller (the dashboard), not priced again. Cached per process while nothing it reads changes."""
    this_period, _ = invoicing.current_period(tenant, now)
    state = period_pricing.tenant_state(tenant.pk)
    if state is None:
        return _unbilled_usage(tenant, this_period, now, current)
    key = (*state, this_period, tenant.currency, tenant.timezone, settings.SELLER_COUNTRY)
    with _UNBILLED_LOCK:
        found = _UNBILLED.get(tenant.pk)
        if found is not None and found[0] == key:
            _UNBILLED.move_to_end(tenant.pk)
            return found[1]
    total = _unbilled_usage(tenant, this_period, now, current)
    with _UNBILLED_LOCK:
        _UNBILLED[tenant.pk] = (key, total)
        _UNBILLED.move_to_end(tenant.pk)
        while len(_UNBILLED) > CACHED_TENANTS:
            _UNBILLED.popitem(last=False)
    return total


def _unbilled_usage(
    tenant: Tenant, this_period, now: datetime | None, current: period_pricing.PricedPeriod | None
) -> Decimal:
    months, total = unbilled_periods(tenant, now), ZERO
    for month in months:
        if month == this_period and current is not None:
            total += current.total
        else:
            total += period_pricing.price_period(tenant, month, periods.next_month(month)).total
    # the invoice that will carry the late usage of finalized periods: the first unbilled one
    first = months[0] if months else periods.next_month(this_period)
    next_invoice = Invoice(tenant=tenant, period_start=first, period_end=periods.next_month(first))
    total += sum((line.amount for line in late_usage.adjustment_lines(next_invoice)), ZERO)
    return total


def held(tenant: Tenant, now: datetime | None = None) -> Decimal:
    now = now or timezone.now()
    active = Hold.objects.for_tenant(tenant).filter(released_at__isnull=True, expires_at__gt=now)
    return active.aggregate(s=Sum("amount"))["s"] or ZERO


def balance(
    tenant: Tenant, now: datetime | None = None, current: period_pricing.PricedPeriod | None = None
) -> Balance:
    now = now or timezone.now()
    return Balance(
        currency=tenant.currency,
        ledger_balance=credits.ledger_balance(tenant, now),
        unbilled_usage=unbilled_usage(tenant, now, current),
        held=held(tenant, now),
        policy=policy_of(tenant).policy,
    )


def cost_per_second(tenant: Tenant, now: datetime | None = None) -> Decimal:
    """The tenant's own recent cost per second of session: Σ per-call costs ÷ Σ lengths of its sessions that
    ended in the last RECENT_CALLS (the latest RECENT_CALLS_LIMIT); else its plan's expected cost per minute ÷ 60."""
    now = now or timezone.now()
    recent = list(
        Session.objects.for_tenant(tenant)
        .filter(ended_at__gte=now - RECENT_CALLS, ended_at__lte=now, started_at__isnull=False)
        .order_by("-ended_at")
        .values_list("session_id", "started_at", "ended_at")[:RECENT_CALLS_LIMIT]
    )
    seconds = sum(((end - start).total_seconds() for _, start, end in recent), 0.0)
    if recent and seconds > 0:
        ids = [session_id for session_id, _, _ in recent]
        cost = CallCost.objects.for_tenant(tenant).filter(session_id__in=ids).aggregate(s=Sum("cost"))["s"]
        if cost:
            return cost / Decimal(str(seconds))
    subscription = (
        Subscription.objects.for_tenant(tenant)
        .filter(starts_on__lte=timezone.localdate())
        .select_related("plan")
        .order_by("-starts_on")
        .first()
    )
    per_minute = subscription.plan.expected_cost_per_minute if subscription else None
    if per_minute is None:
        raise NoRateForDuration(
            "expected_seconds needs recent calls of this tenant or an expected cost per minute on its plan; "
            "send amount instead"
        )
    return per_minute / 60


def amount_for(tenant: Tenant, expected_seconds: Decimal) -> Decimal:
    return round_money(expected_seconds * cost_per_second(tenant), tenant.currency)


def _locked_policy(tenant: Tenant) -> SpendPolicy:
    _ensure_policy_row(tenant)
    return SpendPolicy.objects.select_for_update().get(tenant=tenant)


# Tenants known to have a SpendPolicy row (the row authorizations lock; rows are deleted only with their tenant).
_HAS_POLICY_ROW: set[int] = set()


def _ensure_policy_row(tenant: Tenant) -> None:
    if tenant.pk not in _HAS_POLICY_ROW:
        SpendPolicy.objects.get_or_create(tenant=tenant)
        _HAS_POLICY_ROW.add(tenant.pk)


def _owed(tenant: Tenant, now: datetime) -> Decimal:
    """The unbilled usage less the ledger balance: what an authorization reads before the policy row's lock."""
    return unbilled_usage(tenant, now) - credits.ledger_balance(tenant, now)


def _check(policy: SpendPolicy, available: Decimal, required: Decimal, currency: str) -> None:
    if policy.policy == SpendPolicy.Policy.PREPAID_HARD and available - required < -policy.overdraft:
        raise Refused(available, required, currency)


# An authorization's locked part, sent as one message (two statements, executed by PostgreSQL as one implicit
# transaction when no transaction is open): take the policy row's lock, then, in a statement whose snapshot is
# taken after the lock was granted (so it sees every hold committed before), sum the active holds and insert the
# hold when the policy allows it and the call has no active hold yet. The lock is held for PostgreSQL's work
# only, never across a round trip to a Python thread waiting for the GIL, so holds of one tenant queue for
# about a millisecond each.
_TAKE_HOLD_SQL = """
SELECT 1 FROM spend_spendpolicy WHERE tenant_id = %(tenant)s FOR UPDATE;
WITH policy AS (  -- a tenant without a policy row is postpaid (SpendPolicy's defaults)
    SELECT coalesce(p.policy, %(postpaid)s) AS policy, coalesce(p.overdraft, 0) AS overdraft
    FROM (SELECT 1) AS one LEFT JOIN spend_spendpolicy AS p ON p.tenant_id = %(tenant)s
), held AS (
    SELECT coalesce(sum(amount), 0) AS amount FROM spend_hold
    WHERE tenant_id = %(tenant)s AND released_at IS NULL AND expires_at > %(now)s
), renewing AS (
    SELECT EXISTS (
        SELECT 1 FROM spend_hold WHERE tenant_id = %(tenant)s AND session_id = %(session)s
        AND released_at IS NULL AND expires_at > %(now)s
    ) AS found
), taken AS (
    INSERT INTO spend_hold (tenant_id, agent_id, session_id, amount, currency, created_at, expires_at,
                            released_at, release_reason)
    SELECT %(tenant)s, %(agent)s, %(session)s, %(amount)s, %(currency)s, %(now)s, %(expires)s, NULL, ''
    FROM policy, held, renewing
    WHERE NOT renewing.found
      AND (policy.policy <> %(hard)s OR -%(owed)s - held.amount - %(amount)s >= -policy.overdraft)
    RETURNING id
)
SELECT (SELECT id FROM taken), held.amount, renewing.found FROM held, renewing
"""


def authorize(
    tenant: Tenant, agent: Agent, session_id: str, amount: Decimal, ttl: timedelta = DEFAULT_TTL
) -> tuple[Hold, Decimal]:
    """Hold ``amount`` for a call under the tenant's policy: the hold and the available balance after it, or
    Refused. Serialized per tenant by the policy row's lock, held only for the holds' sum and the insert
    (:data:`_TAKE_HOLD_SQL`): the unbilled usage and the ledger are read before it, as neither ingest nor the
    ledger's writers take the lock anyway (only holds serialize, so holds never over-commit). A call has one
    hold: asking again for a session whose hold is active renews that hold (and raises it to a higher amount)
    instead of adding another."""
    now = timezone.now()
    _ensure_policy_row(tenant)
    owed = _owed(tenant, now)
    params = {
        "tenant": tenant.pk,
        "agent": agent.pk,
        "session": session_id,
        "amount": amount,
        "currency": tenant.currency,
        "now": now,
        "expires": now + ttl,
        "hard": SpendPolicy.Policy.PREPAID_HARD,
        "postpaid": SpendPolicy.Policy.POSTPAID,
        "owed": owed,
    }
    with connection.cursor() as cursor:
        cursor.execute(_TAKE_HOLD_SQL, params)
        cursor.nextset()
        hold_id, held_before, renewing = cursor.fetchone()
    available = -owed - held_before
    if hold_id is not None:
        hold = Hold(
            pk=hold_id,
            tenant=tenant,
            agent=agent,
            session_id=session_id,
            amount=amount,
            currency=tenant.currency,
            created_at=now,
            expires_at=now + ttl,
        )
        return hold, available - amount
    if renewing:
        # one hold per call: asking again (a retry whose answer was lost, or a new estimate) renews it, and
        # raises it when more is asked (checked for the difference), never adds a second one
        current = (
            Hold.objects.for_tenant(tenant)
            .filter(session_id=session_id, released_at__isnull=True, expires_at__gt=now)
            .order_by("-created_at")
            .first()
        )
        if current is not None:
            try:
                return extend(current, ttl, amount if amount > current.amount else None, owed=owed)
            except HoldEnded:
                pass
        return authorize(tenant, agent, session_id, amount, ttl)  # it ended in between: a new hold
    raise Refused(available, amount, tenant.currency)


def extend(
    hold: Hold,
    ttl: timedelta = DEFAULT_TTL,
    amount: Decimal | None = None,
    *,
    owed: Decimal | None = None,
) -> tuple[Hold, Decimal]:
    """Keep an active hold for ``ttl`` from now, optionally raising its amount (checked as a new hold of the
    difference). ``owed``: the unbilled usage less the ledger balance, already read by the caller."""
    tenant = hold.tenant
    now = timezone.now()
    if owed is None:
        owed = _owed(tenant, now)
    with transaction.atomic():
        policy = _locked_policy(tenant)
        hold = Hold.objects.select_for_update().get(tenant=tenant, pk=hold.pk)
        if hold.released_at is not None or hold.expires_at <= now:
            raise HoldEnded(hold)
        available = -owed - held(tenant, now)
        if amount is not None and amount > hold.amount:
            _check(policy, available, amount - hold.amount, tenant.currency)
            available -= amount - hold.amount
            hold.amount = amount
        hold.expires_at = now + ttl
        hold.save(update_fields=["amount", "expires_at"])
        return hold, available


class HoldEnded(Exception):
    def __init__(self, hold: Hold):
        super().__init__(f"hold {hold.pk} has ended")
        self.hold = hold


AUTHORIZATION_DENIED = "authorization.denied"


def record_denial(tenant: Tenant, agent: Agent, session_id: str, refused: Refused) -> None:
    """Tell the tenant's webhooks a hold was refused (in a transaction of its own: the refused one rolled back)."""
    with transaction.atomic():
        outbox.record(
            tenant.pk,
            AUTHORIZATION_DENIED,
            {
                "agent_id": agent.pk,
                "session_id": session_id,
                "required": str(refused.required),
                "available": str(refused.available),
                "currency": refused.currency,
            },
        )


def release(hold: Hold, reason: str = "released") -> Hold:
    """End a hold (idempotent: releasing an ended hold changes nothing)."""
    now = timezone.now()
    if Hold.objects.filter(tenant_id=hold.tenant_id, pk=hold.pk, released_at__isnull=True).update(
        released_at=now, release_reason=reason
    ):
        hold.released_at, hold.release_reason = now, reason
    else:
        hold.refresh_from_db(fields=["released_at", "release_reason"])  # ended before: as it was
    return hold


def release_session(tenant: Tenant, session_id: str) -> int:
    """The session ended: its holds stop counting."""
    return (
        Hold.objects.for_tenant(tenant)
        .filter(session_id=session_id, released_at__isnull=True)
        .update(released_at=timezone.now(), release_reason="session_ended")
    )


@dataclass(frozen=True)
class Burn:
    """Spend per hour and per day lately, and how long the available balance lasts at the daily rate."""

    last_hour: Decimal
    last_day: Decimal
    available: Decimal

    @property
    def runway_days(self) -> Decimal | None:
        if self.last_day <= 0 or self.available <= 0:
            return None
        return (self.available / self.last_day).quantize(Decimal("0.1"))


def burn(tenant: Tenant, cost_of, available: Decimal, now: datetime | None = None) -> Burn:
    """Usage of the rollup hours that overlap the last hour (the current and the previous clock hour) and the
    last 24, priced by ``cost_of(key, quantity)`` (the current period's unit prices, as the dashboard prices
    everything). Rollups are hourly, so a window starts at the top of the hour it begins in: a call ten minutes
    ago always counts, at the price of up to an hour more counted."""
    from usage import rollups

    now = now or timezone.now()

    def spent(since: timedelta) -> Decimal:
        start = (now - since).replace(minute=0, second=0, microsecond=0)
        usage = rollups.usage_totals(tenant.pk, start, now + timedelta(hours=1))
        return sum((cost_of(key, quantity) for key, quantity in usage.items()), ZERO)

    return Burn(spent(timedelta(hours=1)), spent(timedelta(days=1)), available)


BALANCE_LOW = "balance.low"
BALANCE_DEPLETED = "balance.depleted"
ANNOUNCED = {SpendPolicy.BalanceState.LOW: BALANCE_LOW, SpendPolicy.BalanceState.DEPLETED: BALANCE_DEPLETED}
SEVERITY = {
    SpendPolicy.BalanceState.OK: 0,
    SpendPolicy.BalanceState.LOW: 1,
    SpendPolicy.BalanceState.DEPLETED: 2,
}


@dataclass(frozen=True)
class Checked:
    """What one check did: budget alerts sent, the balance state (prepaid only), the auto-recharge asked for."""

    budget_alerts: int
    balance_state: str | None
    recharge: str | None


def watched(tenant: Tenant) -> bool:
    """Whether there is anything to check: a budget, or a prepaid policy."""
    prepaid = SpendPolicy.objects.filter(tenant=tenant).exclude(policy=SpendPolicy.Policy.POSTPAID).exists()
    return prepaid or Budget.objects.filter(tenant=tenant).exists()


def check(tenant: Tenant, now: datetime | None = None) -> Checked:
    """Budgets, balance alerts and auto-recharge from one pricing of the current period."""
    now = now or timezone.now()
    spend = selectors.current_spend(tenant, now)
    alerts = budgets.check_budget(tenant, spend)
    policy = policy_of(tenant)
    if policy.pk is None or policy.policy == SpendPolicy.Policy.POSTPAID:
        return Checked(len(alerts), None, None)
    current = balance(tenant, now, current=spend.priced)
    state = _announce(tenant, current, now)
    return Checked(len(alerts), state, _recharge(tenant, policy, current))


def state_of(policy: SpendPolicy, available: Decimal) -> str:
    if available <= 0:
        return SpendPolicy.BalanceState.DEPLETED
    if policy.low_balance_threshold is not None and available < policy.low_balance_threshold:
        return SpendPolicy.BalanceState.LOW
    return SpendPolicy.BalanceState.OK


@transaction.atomic
def _announce(tenant: Tenant, current: Balance, now: datetime) -> str:
    """Record the balance's state; a fall to low or depleted is announced once (under the policy's row lock,
    so two checks never both announce it); a rise is recorded silently, so the next fall is announced again."""
    policy = SpendPolicy.objects.select_for_update().get(tenant=tenant)
    state = state_of(policy, current.available)
    previous = policy.balance_state
    if state != previous:
        if SEVERITY[state] > SEVERITY[previous]:
            outbox.record(
                tenant.pk,
                ANNOUNCED[state],
                {
                    **{
                        name: str(round_money(getattr(current, name), current.currency))
                        for name in ("available", "ledger_balance", "unbilled_usage", "held")
                    },
                    "currency": current.currency,
                    "policy": current.policy,
                    "low_balance_threshold": None
                    if policy.low_balance_threshold is None
                    else str(round_money(policy.low_balance_threshold, current.currency)),
                },
            )
        SpendPolicy.objects.filter(pk=policy.pk).update(balance_state=state, balance_checked_at=now)
    else:
        SpendPolicy.objects.filter(pk=policy.pk).update(balance_checked_at=now)
    return state


def recharge_paused(tenant: Tenant, policy: SpendPolicy) -> bool:
    """A failed auto-recharge pauses auto-recharge until the policy is saved again (a person looked)."""
    failed = topups.last_failed_recharge(tenant)
    return failed is not None and failed.settled_at is not None and failed.settled_at > policy.updated_at


def _recharge(tenant: Tenant, policy: SpendPolicy, current: Balance) -> str | None:
    threshold = policy.auto_recharge_threshold
    if threshold is None or current.available >= threshold:
        return None
    if recharge_paused(tenant, policy):
        return "paused"
    try:
        topup = topups.request(tenant, policy.auto_recharge_amount, automatic=True)
    except topups.TopUpError as error:
        logger.warning("auto-recharge of %s not asked for: %s", tenant, error)
        return f"refused: {error}"
    return "in flight" if topup is None else f"requested #{topup.pk}"


def save_alerts(
    tenant: Tenant,
    *,
    low_balance_threshold: Decimal | None,
    auto_recharge_threshold: Decimal | None,
    auto_recharge_amount: Decimal | None,
) -> SpendPolicy:
    """A tenant's own balance settings (the portal). Saving resumes an auto-recharge paused by a failed
    payment: a person has looked. The policy itself (postpaid/prepaid, overdraft) is the platform's to set."""
    policy, _ = SpendPolicy.objects.get_or_create(tenant=tenant)
    policy.low_balance_threshold = low_balance_threshold
    policy.auto_recharge_threshold = auto_recharge_threshold
    policy.auto_recharge_amount = auto_recharge_amount if auto_recharge_threshold is not None else None
    policy.updated_at = timezone.now()
    policy.save(
        update_fields=[
            "low_balance_threshold",
            "auto_recharge_threshold",
            "auto_recharge_amount",
            "updated_at",
        ]
    )
    return policy
