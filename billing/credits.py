"""The prepaid credit ledger (DESIGN §13, issue 15, decision 018): grants, reversals and expiries, and the
ledger balance as the sum of its entries.

Every write takes the tenant's grants ``FOR UPDATE`` first (in id order), so two writers never both spend the
same remaining value; the database refuses what no code path should do (see billing.models.LedgerEntry).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from billing.models import CreditGrant, LedgerEntry
from billing.pricing import round_money
from notifications import outbox
from tenants.models import Tenant

ZERO = Decimal(0)
CREDIT_GRANTED = "credit.granted"
CREDIT_EXPIRED = "credit.expired"


class CreditError(ValueError):
    """A ledger write that would break a rule (more than is left, a bad amount); nothing was written."""


def _amount(value: Decimal | str | int, currency: str, name: str = "amount") -> Decimal:
    amount = Decimal(value)
    if not amount.is_finite() or amount <= 0:
        raise CreditError(f"{name} must be a positive amount")
    if round_money(amount, currency) != amount:
        raise CreditError(f"{name} has digits below the smallest unit of {currency}")
    return amount


def check_grant(tenant: Tenant, amount, source: str, reason: str, effective_at, expires_at) -> Decimal:
    """The rules a grant must meet (CreditError naming the first it breaks); returns the amount."""
    amount = _amount(amount, tenant.currency)
    if source not in CreditGrant.Source.values:
        raise CreditError(f"source must be one of {', '.join(CreditGrant.Source.values)}")
    if not (reason or "").strip():
        raise CreditError("reason is required")
    if expires_at is not None and expires_at <= (effective_at or timezone.now()):
        raise CreditError("expires_at must be after effective_at")
    return amount


def check_correction(grant_: CreditGrant, kind: str, amount) -> Decimal:
    """The rules of a reversal (positive, at most what is left) or an adjustment (signed, never below zero
    left); returns the signed amount the entry will carry."""
    left = remaining(grant_)
    value = Decimal(amount)
    if not value.is_finite() or value == 0 or round_money(value, grant_.currency) != value:
        raise CreditError(f"amount must be a non-zero amount in whole units of {grant_.currency}")
    if kind == LedgerEntry.Kind.REVERSAL:
        if value < 0 or value > left:
            raise CreditError(f"a reversal takes back between 0 and the {left} {grant_.currency} left")
        return -value
    if left + value < 0:
        raise CreditError(f"only {left} {grant_.currency} of this grant is left")
    if (
        value > 0
        and grant_.expires_at is not None
        and (
            grant_.expires_at <= timezone.now()
            or grant_.entries.filter(kind=LedgerEntry.Kind.EXPIRY).exists()
        )
    ):
        # an expired grant pays nothing and expires once: credit added to it could never be used, nor leave the
        # balance by an expiry (an expiry run for a later time, expire_due(now=…), may have posted it already)
        raise CreditError("this grant has expired: grant new credit instead")
    return value


@transaction.atomic
def grant(
    tenant: Tenant,
    amount: Decimal | str | int,
    *,
    source: str,
    reason: str,
    priority: int = 0,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    by=None,
    topup=None,
    credit_note=None,
) -> CreditGrant:
    """Give the tenant credit in its currency; posted to the ledger at once (it counts from ``effective_at``).
    ``topup`` and ``credit_note`` name what it is the outcome of (each gives at most one grant)."""
    amount = check_grant(tenant, amount, source, reason, effective_at, expires_at)
    effective_at = effective_at or timezone.now()
    created = CreditGrant.objects.create(
        tenant=tenant,
        currency=tenant.currency,
        source=source,
        amount=amount,
        priority=priority,
        effective_at=effective_at,
        expires_at=expires_at,
        reason=reason,
        created_by=by,
        topup=topup,
        credit_note=credit_note,
    )
    LedgerEntry.objects.create(
        tenant=tenant, grant=created, kind=LedgerEntry.Kind.GRANT, amount=amount, created_by=by
    )
    outbox.record(
        tenant.pk,
        CREDIT_GRANTED,
        {
            "grant_id": created.pk,
            "amount": str(amount),
            "currency": created.currency,
            "source": source,
            "priority": priority,
            "effective_at": effective_at.isoformat(),
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return created


def remaining(grant_: CreditGrant) -> Decimal:
    return grant_.entries.aggregate(s=Sum("amount"))["s"] or ZERO


def reverse(grant_: CreditGrant, amount: Decimal | str | int | None, *, reason: str, by=None) -> LedgerEntry:
    """Take back ``amount`` (default: all that is left) of a grant, with a reason."""
    return _correct(grant_, LedgerEntry.Kind.REVERSAL, amount, reason, by)


def adjust(grant_: CreditGrant, amount: Decimal | str | int, *, reason: str, by=None) -> LedgerEntry:
    """Correct a grant by a signed amount, with a reason (never below what is left of it)."""
    return _correct(grant_, LedgerEntry.Kind.ADJUSTMENT, amount, reason, by)


@transaction.atomic
def _correct(grant_: CreditGrant, kind: str, amount, reason: str, by) -> LedgerEntry:
    """A staff entry on a grant, checked by check_correction under the grant's row lock."""
    if not reason.strip():
        raise CreditError("reason is required")
    locked = CreditGrant.objects.select_for_update().get(pk=grant_.pk)
    signed = check_correction(locked, kind, remaining(locked) if amount is None else amount)
    return LedgerEntry.objects.create(
        tenant_id=locked.tenant_id, grant=locked, kind=kind, amount=signed, reason=reason, created_by=by
    )


# The grants due to expire: past their expiry, with credit left and no expiry entry yet. expire_due posts an
# expiry for each; ledger_balance asks whether any exists before it trusts its one-statement sum. One condition
# for both, so a balance read can never see a grant as due that expire_due would skip, or the other way round.
_DUE_GRANTS = """
SELECT g.id FROM billing_creditgrant AS g
WHERE g.expires_at <= %(now)s{tenant}
  AND NOT EXISTS (SELECT 1 FROM billing_ledgerentry AS x
                  WHERE x.tenant_id = g.tenant_id AND x.grant_id = g.id AND x.kind = %(expiry)s)
  AND (SELECT sum(x.amount) FROM billing_ledgerentry AS x WHERE x.tenant_id = g.tenant_id AND x.grant_id = g.id) > 0
"""


def _due_grants(tenant: bool) -> str:
    return _DUE_GRANTS.format(tenant=" AND g.tenant_id = %(tenant)s" if tenant else "")


def expire_due(tenant: Tenant | None = None, now: datetime | None = None) -> int:
    """Post an expiry entry for what is left of every grant whose expiry has passed (once per grant: a unique
    constraint), so expired credit leaves the balance as an entry, never silently. Returns how many."""
    now = now or timezone.now()
    params = {"now": now, "expiry": LedgerEntry.Kind.EXPIRY, "tenant": tenant.pk if tenant else None}
    with connection.cursor() as cursor:
        cursor.execute(_due_grants(tenant is not None) + " ORDER BY g.id", params)
        due = [row[0] for row in cursor.fetchall()]
    posted = 0
    for pk in due:
        with transaction.atomic():
            locked = CreditGrant.objects.select_for_update().get(pk=pk)
            if locked.entries.filter(kind=LedgerEntry.Kind.EXPIRY).exists():
                continue  # posted by a concurrent run since the query above
            left = remaining(locked)
            if left > 0:
                LedgerEntry.objects.create(
                    tenant_id=locked.tenant_id, grant=locked, kind=LedgerEntry.Kind.EXPIRY, amount=-left
                )
                outbox.record(
                    locked.tenant_id,
                    CREDIT_EXPIRED,
                    {
                        "grant_id": locked.pk,
                        "amount": str(left),
                        "currency": locked.currency,
                        "expired_at": locked.expires_at.isoformat(),
                    },
                )
                posted += 1
    return posted


_LEDGER_BALANCE_SQL = f"""
SELECT (SELECT sum(e.amount) FROM billing_ledgerentry AS e
        JOIN billing_creditgrant AS g ON g.tenant_id = e.tenant_id AND g.id = e.grant_id
        WHERE e.tenant_id = %(tenant)s AND g.effective_at <= %(now)s AND g.currency = %(currency)s),
       EXISTS ({_due_grants(tenant=True)})
"""  # noqa: S608 - constant SQL fragments only


def ledger_balance(tenant: Tenant, now: datetime | None = None) -> Decimal:
    """Σ the ledger's entries for grants already in effect (expiries due are posted first). One statement when
    no expiry is due, i.e. no grant past its expiry has credit left without an expiry entry (every balance read
    and authorization asks)."""
    now = now or timezone.now()
    params = {"tenant": tenant.pk, "now": now, "currency": tenant.currency, "expiry": LedgerEntry.Kind.EXPIRY}
    with connection.cursor() as cursor:
        cursor.execute(_LEDGER_BALANCE_SQL, params)
        total, expiry_due = cursor.fetchone()
        if expiry_due and expire_due(tenant, now):
            cursor.execute(_LEDGER_BALANCE_SQL, params)
            total, _ = cursor.fetchone()
    return total or ZERO


def _spendable_grants(tenant_id: int, currency: str, now: datetime):
    """Grants that can pay now (in effect, not expired, the currency), locked, in the order they are used:
    highest priority first, then the soonest expiry, then the oldest."""
    return (
        CreditGrant.objects.select_for_update()
        .filter(tenant_id=tenant_id, currency=currency, effective_at__lte=now)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .order_by("-priority", F("expires_at").asc(nulls_last=True), "created_at", "id")
    )


def spendable(invoice, now: datetime | None = None) -> Decimal:
    """What the tenant's credit can pay of ``invoice`` now: Σ what is left of the grants that can pay (their rows
    locked until the caller's transaction ends, so nothing spends them in between)."""
    now = now or timezone.now()
    expire_due(invoice.tenant, now)
    return sum(
        (max(remaining(g), ZERO) for g in _spendable_grants(invoice.tenant_id, invoice.currency, now)), ZERO
    )


def apply_to_invoice(invoice, now: datetime | None = None, up_to: Decimal | None = None) -> Decimal:
    """Pay a finalizing invoice from the tenant's credit, up to ``up_to`` (billing.settlement's credits applied;
    default: the invoice's total) and never below zero: grants by priority, then the soonest expiry, then the
    oldest; one application entry per grant used (the database refuses a second for the same grant and
    invoice). Returns the amount applied. Runs in the finalization's transaction."""
    now = now or timezone.now()
    due = invoice.total if up_to is None else min(up_to, invoice.total)
    if due <= 0:
        return ZERO
    expire_due(invoice.tenant, now)
    grants = _spendable_grants(invoice.tenant_id, invoice.currency, now)
    applied = ZERO
    for each in grants:
        left = remaining(each)
        if left <= 0:
            continue
        take = min(left, due)
        LedgerEntry.objects.create(
            tenant_id=invoice.tenant_id,
            grant=each,
            kind=LedgerEntry.Kind.APPLICATION,
            amount=-take,
            invoice=invoice,
        )
        due -= take
        applied += take
        if due == 0:
            break
    return applied
