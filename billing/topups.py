"""Top-ups: prepaid credit bought through Stripe (issue 15 part 5, decision 018), the ledger's side.

A top-up is asked for (a manager in the portal, or auto-recharge when the available balance falls below the
tenant's threshold), pushed to Stripe as a one-off invoice by ``payments.topups`` (it subscribes to
``topup.requested``), and credited when Stripe says it is paid — by the payment call's own answer, a webhook or
the reconcile beat, whichever comes first: :func:`credit` takes the top-up's row lock and the database allows
one grant per top-up, so the credit is granted exactly once however many of them arrive.

States: pending (not at Stripe yet) → open (Stripe invoice finalized, awaiting payment) → paid | failed |
canceled. The database holds at most one automatic top-up pending or open per tenant, and one top-up per form
submission (``request_key``).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import credits
from billing.models import CreditGrant, TopUp
from billing.pricing import round_money
from notifications import outbox
from tenants.models import Tenant

TOPUP_REQUESTED = "topup.requested"  # internal: payments pushes it to Stripe
BALANCE_RECHARGED = "balance.recharged"
BALANCE_RECHARGE_FAILED = "balance.recharge_failed"


class TopUpError(ValueError):
    """A top-up that cannot be asked for (a bad amount); nothing was written."""


def limits() -> tuple[Decimal, Decimal]:
    """The smallest and largest top-up, in the tenant's currency (settings TOPUP_MIN_AMOUNT/TOPUP_MAX_AMOUNT)."""
    return Decimal(str(settings.TOPUP_MIN_AMOUNT)), Decimal(str(settings.TOPUP_MAX_AMOUNT))


def check_amount(tenant: Tenant, value) -> Decimal:
    """A top-up amount: between the limits, in whole minor units of the tenant's currency."""
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise TopUpError("amount must be a decimal number") from None
    low, high = limits()
    if not amount.is_finite() or not low <= amount <= high:
        raise TopUpError(f"amount must be between {low} and {high} {tenant.currency}")
    if round_money(amount, tenant.currency) != amount:
        raise TopUpError(f"amount has digits below the smallest unit of {tenant.currency}")
    return amount


def request(
    tenant: Tenant, amount, *, automatic: bool = False, by=None, request_key: str = ""
) -> TopUp | None:
    """Ask for a top-up; Stripe is asked after commit. Returns the top-up, the one already made for the same
    ``request_key`` (a double submit), or None for an auto-recharge while another is in flight."""
    amount = check_amount(tenant, amount)
    try:
        with transaction.atomic():
            topup = TopUp.objects.create(
                tenant=tenant,
                currency=tenant.currency,
                amount=amount,
                automatic=automatic,
                requested_by=by,
                request_key=request_key,
            )
            outbox.record(tenant.pk, TOPUP_REQUESTED, {"topup_id": topup.pk})
    except IntegrityError:
        if request_key:
            found = TopUp.objects.for_tenant(tenant).filter(request_key=request_key).first()
            if found is not None:
                return found
        if automatic:
            return None  # one auto-recharge in flight already (the partial unique index)
        raise
    return topup


def in_flight(tenant: Tenant) -> TopUp | None:
    return TopUp.objects.for_tenant(tenant).filter(automatic=True, status__in=TopUp.IN_FLIGHT).first()


def last_failed_recharge(tenant: Tenant) -> TopUp | None:
    return (
        TopUp.objects.for_tenant(tenant)
        .filter(automatic=True, status=TopUp.Status.FAILED)
        .order_by("-settled_at")
        .first()
    )


def mark_open(topup_id: int, stripe_invoice_id: str, hosted_invoice_url: str = "") -> None:
    """Stripe has the invoice, finalized and waiting for payment (a pending top-up only moves forward)."""
    TopUp.objects.filter(pk=topup_id, status=TopUp.Status.PENDING).update(
        status=TopUp.Status.OPEN, stripe_invoice_id=stripe_invoice_id, hosted_invoice_url=hosted_invoice_url
    )
    TopUp.objects.filter(pk=topup_id, stripe_invoice_id="").update(stripe_invoice_id=stripe_invoice_id)


@transaction.atomic
def credit(topup_id: int, stripe_invoice_id: str) -> CreditGrant:
    """Stripe says the top-up is paid: grant its credit, once (later calls return the same grant). A top-up
    marked failed or canceled here is still credited — the money arrived (a hosted page paid late)."""
    topup = TopUp.objects.select_for_update().get(pk=topup_id)
    existing = CreditGrant.objects.filter(topup=topup).first()
    if existing is not None:
        return existing
    granted = credits.grant(
        topup.tenant,
        topup.amount,
        source=CreditGrant.Source.PURCHASED,
        reason=f"{'Auto-recharge' if topup.automatic else 'Top-up'} #{topup.pk}, paid through Stripe "
        f"({stripe_invoice_id})",
        by=topup.requested_by,
        topup=topup,
    )
    now = timezone.now()
    TopUp.objects.filter(pk=topup.pk).update(
        status=TopUp.Status.PAID, stripe_invoice_id=stripe_invoice_id, settled_at=now, failure_message=""
    )
    outbox.record(
        topup.tenant_id,
        BALANCE_RECHARGED,
        {
            "topup_id": topup.pk,
            "grant_id": granted.pk,
            "amount": str(round_money(topup.amount, topup.currency)),
            "currency": topup.currency,
            "automatic": topup.automatic,
        },
    )
    return granted


@transaction.atomic
def fail(topup_id: int, message: str) -> bool:
    """The payment failed (a declined card, no payment method): reported once, never retried by itself — an
    auto-recharge stays paused until the tenant's policy is saved again. False if it had already settled."""
    topup = TopUp.objects.select_for_update().get(pk=topup_id)
    if topup.status not in TopUp.IN_FLIGHT:
        return False
    TopUp.objects.filter(pk=topup.pk).update(
        status=TopUp.Status.FAILED, failure_message=message[:500], settled_at=timezone.now()
    )
    outbox.record(
        topup.tenant_id,
        BALANCE_RECHARGE_FAILED,
        {
            "topup_id": topup.pk,
            "amount": str(round_money(topup.amount, topup.currency)),
            "currency": topup.currency,
            "automatic": topup.automatic,
            "reason": message[:500],
        },
    )
    return True


def cancel(topup_id: int, message: str = "") -> bool:
    """Voided on Stripe's side before it was paid. False if it had already settled."""
    return bool(
        TopUp.objects.filter(pk=topup_id, status__in=TopUp.IN_FLIGHT).update(
            status=TopUp.Status.CANCELED, failure_message=message[:500], settled_at=timezone.now()
        )
    )
