"""Top-ups through Stripe (issue 15 part 5, decision 018): a one-off Stripe invoice for the amount.

Push (:func:`push_topup`, queued after ``topup.requested`` commits): the tenant's Stripe customer; then, if the
customer has a default payment method, an invoice with ``collection_method=charge_automatically`` that is
finalized and paid at once (``/pay``); otherwise — a manager's purchase only — a ``send_invoice`` invoice whose
hosted page the portal links to. An auto-recharge without a payment method fails at once: there is nobody to
pay a page. Every POST carries an idempotency key from the top-up's id, and the invoice is found again by our
metadata, so a rerun after a timeout, a killed worker or a lost answer carries on and never makes a second
invoice or charges twice.

Paid (the ``/pay`` answer, an ``invoice.paid`` webhook or :func:`refresh_topups`): ``billing.topups.credit``
grants the credit exactly once. A declined payment fails the top-up once (``balance.recharge_failed``) and
voids the Stripe invoice, so nothing charges it later; it is never retried by itself.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import stripe
from django.utils import timezone

from billing import topups
from billing.models import TopUp
from billing.pricing import to_minor_units
from payments.stripe_sync import (
    client,
    ensure_customer,
    hosted_url,
    is_configured,
    is_ours,
    key_options,
    namespace,
    our_metadata,
    plain,
)

logger = logging.getLogger(__name__)

DAYS_UNTIL_DUE = 7  # a manager's hosted-page top-up
STALE_PENDING = timedelta(minutes=5)  # a pending top-up not at Stripe by then is pushed again by the beat


def push_topup(topup_id: int) -> str:
    """Take a top-up to Stripe and as far as it can go now; safe to run again at any point. Returns its status.
    Transient Stripe errors are raised for the Celery task to retry."""
    topup = TopUp.objects.select_related("tenant").get(pk=topup_id)
    if topup.status not in TopUp.IN_FLIGHT or not is_configured():
        return topup.status
    TopUp.objects.filter(pk=topup_id).update(attempted_at=timezone.now())
    api = client()
    try:
        customer_id = ensure_customer(api, topup.tenant)
        invoice = _find(api, topup, customer_id)
        if invoice is None:
            payment_method = _default_payment_method(api, customer_id)
            if payment_method is None and topup.automatic:
                topups.fail(topup.pk, "the Stripe customer has no default payment method to charge")
                return TopUp.Status.FAILED
            invoice = _create(api, topup, customer_id, automatic_charge=payment_method is not None)
        if invoice.status == "draft":
            _add_item(api, topup, invoice.id, customer_id)
            invoice = api.v1.invoices.finalize_invoice(
                invoice.id, {"auto_advance": False}, key_options("topup-finalize", topup.pk)
            )
        if invoice.total != to_minor_units(topup.amount, topup.currency):
            # never pay (or credit) an amount that is not the top-up's
            _give_up(
                api, topup, f"Stripe invoice {invoice.id} totals {invoice.total}, not the top-up's amount"
            )
            return TopUp.Status.FAILED
        if invoice.status == "open" and invoice.collection_method == "charge_automatically":
            invoice = _pay(api, topup, invoice)
    except stripe.CardError as error:
        _give_up(api, topup, f"the payment was declined: {error.user_message or error.code or error}")
        return TopUp.Status.FAILED
    except stripe.InvalidRequestError as error:
        _give_up(api, topup, f"Stripe refused the top-up: {error.user_message or error}")
        return TopUp.Status.FAILED
    return apply_invoice(topup.pk, _plain_invoice(invoice))


def _plain_invoice(invoice: stripe.Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "status": invoice.status,
        "customer": invoice.customer,
        "currency": invoice.currency,
        "total": invoice.total,
        "hosted_invoice_url": hosted_url(invoice),
    }


def _find(api: stripe.StripeClient, topup: TopUp, customer_id: str) -> stripe.Invoice | None:
    if topup.stripe_invoice_id:
        return api.v1.invoices.retrieve(topup.stripe_invoice_id)
    for candidate in api.v1.invoices.list({"customer": customer_id, "limit": 100}).auto_paging_iter():
        if is_ours(candidate.metadata, "topup_id", topup.pk):
            TopUp.objects.filter(pk=topup.pk, stripe_invoice_id="").update(stripe_invoice_id=candidate.id)
            return candidate
    return None


def _default_payment_method(api: stripe.StripeClient, customer_id: str) -> str | None:
    customer = api.v1.customers.retrieve(customer_id)
    settings_ = plain(getattr(customer, "invoice_settings", None)) or {}
    method = settings_.get("default_payment_method") if isinstance(settings_, dict) else None
    if isinstance(method, dict):  # expanded
        method = method.get("id")
    return method if isinstance(method, str) and method else None


def _create(
    api: stripe.StripeClient, topup: TopUp, customer_id: str, *, automatic_charge: bool
) -> stripe.Invoice:
    params: dict[str, Any] = {
        "customer": customer_id,
        "currency": topup.currency.lower(),
        "auto_advance": False,
        "pending_invoice_items_behavior": "exclude",
        "description": f"Meterline prepaid credit, {topup.amount} {topup.currency}",
        "metadata": our_metadata(topup_id=topup.pk, tenant_id=topup.tenant_id),
    }
    if automatic_charge:
        params["collection_method"] = "charge_automatically"
    else:
        params.update(collection_method="send_invoice", days_until_due=DAYS_UNTIL_DUE)
    invoice = api.v1.invoices.create(params, key_options("topup", topup.pk))
    TopUp.objects.filter(pk=topup.pk, stripe_invoice_id="").update(stripe_invoice_id=invoice.id)
    return invoice


def _add_item(api: stripe.StripeClient, topup: TopUp, invoice_id: str, customer_id: str) -> None:
    listed = api.v1.invoice_items.list({"invoice": invoice_id, "limit": 10})
    if any(is_ours(item.metadata, "topup_id", topup.pk) for item in listed.auto_paging_iter()):
        return
    api.v1.invoice_items.create(
        {
            "customer": customer_id,
            "invoice": invoice_id,
            "currency": topup.currency.lower(),
            "amount": to_minor_units(topup.amount, topup.currency),
            "description": "Prepaid credit",
            "metadata": our_metadata(topup_id=topup.pk),
        },
        key_options("topup-item", topup.pk),
    )


def _pay(api: stripe.StripeClient, topup: TopUp, invoice: stripe.Invoice) -> stripe.Invoice:
    return api.v1.invoices.pay(invoice.id, {}, key_options("topup-pay", topup.pk))


def _give_up(api: stripe.StripeClient, topup: TopUp, message: str) -> None:
    """Fail it once, and void its Stripe invoice (if one is open) so that nothing collects it later."""
    topups.fail(topup.pk, message)
    stripe_id = TopUp.objects.values_list("stripe_invoice_id", flat=True).get(pk=topup.pk)
    if stripe_id:
        try:
            if api.v1.invoices.retrieve(stripe_id).status == "open":
                api.v1.invoices.void_invoice(stripe_id, {}, key_options("topup-void", topup.pk))
        except stripe.StripeError as void_error:  # left open: it can still be paid, and is then credited
            logger.warning("top-up %s: could not void Stripe invoice %s: %s", topup.pk, stripe_id, void_error)
    logger.info("top-up %s failed: %s", topup.pk, message)


def apply_invoice(topup_id: int, invoice: dict[str, Any]) -> str:
    """Bring a top-up in line with its Stripe invoice (a payment answer, a webhook or a retrieve): paid →
    credited once; void → canceled; open → waiting, with the hosted page's link. Only an invoice that is a
    copy of the top-up counts (the tenant's customer, currency and amount). Returns the top-up's status."""
    topup = TopUp.objects.select_related("tenant").get(pk=topup_id)
    if mismatch := _mismatch(topup, invoice):
        logger.warning(
            "Stripe invoice %s does not match top-up %s: %s", invoice.get("id"), topup_id, mismatch
        )
        return topup.status
    status = invoice.get("status")
    if status == "paid":
        topups.credit(topup.pk, invoice["id"])
    elif status == "void":
        topups.cancel(topup.pk, "voided on Stripe")
    elif status == "open":
        url = invoice.get("hosted_invoice_url") or ""
        topups.mark_open(topup.pk, invoice["id"], url if isinstance(url, str) else "")
    return TopUp.objects.values_list("status", flat=True).get(pk=topup_id)


def _mismatch(topup: TopUp, invoice: dict[str, Any]) -> str | None:
    customer = invoice.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    if not topup.tenant.stripe_customer_id or customer != topup.tenant.stripe_customer_id:
        return "not the tenant's Stripe customer"
    currency = invoice.get("currency")
    if not isinstance(currency, str) or currency.lower() != topup.currency.lower():
        return "another currency"
    total = invoice.get("total")
    if type(total) is not int or total != to_minor_units(topup.amount, topup.currency):
        return f"total {str(total)[:20]} is not the top-up's {to_minor_units(topup.amount, topup.currency)}"
    if topup.stripe_invoice_id and invoice.get("id") != topup.stripe_invoice_id:
        return f"the top-up's Stripe invoice is {topup.stripe_invoice_id}"
    return None


def topup_of(stripe_invoice: dict[str, Any]) -> int | None:
    """Our top-up id in a Stripe invoice's metadata (our namespace only), or None."""
    metadata = stripe_invoice.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("meterline_namespace") != namespace():
        return None
    value = metadata.get("meterline_topup_id")
    if not (isinstance(value, str) and value.isdigit()):
        return None
    return int(value) if TopUp.objects.filter(pk=int(value)).exists() else None


def topups_to_reconcile(now=None, limit: int = 200) -> list[int]:
    """Top-ups still in flight that the beat should push or look up again: pending ones the on-commit task
    did not finish, and open ones waiting for a payment whose webhook may have been missed."""
    now = now or timezone.now()
    stale = TopUp.objects.filter(status=TopUp.Status.PENDING, created_at__lte=now - STALE_PENDING)
    waiting = TopUp.objects.filter(status=TopUp.Status.OPEN)
    return list((stale | waiting).order_by("created_at").values_list("pk", flat=True)[:limit])


def refresh_topup(topup_id: int) -> str:
    """The reconcile beat's look at one top-up: push a pending one again, read an open one's Stripe status."""
    topup = TopUp.objects.get(pk=topup_id)
    if topup.status == TopUp.Status.PENDING or not topup.stripe_invoice_id:
        return push_topup(topup_id)
    invoice = client().v1.invoices.retrieve(topup.stripe_invoice_id)
    return apply_invoice(topup_id, _plain_invoice(invoice))


def handle_invoice_event(event_type: str, stripe_invoice: dict[str, Any]) -> str | None:
    """A Stripe webhook about a top-up's invoice (registered with stripe_sync): paid → credited once, voided →
    canceled, payment failed → an auto-recharge fails (a hosted page stays open for the manager to retry).
    None when the invoice is not a top-up of ours."""
    topup_id = topup_of(stripe_invoice)
    if topup_id is None:
        return None
    if event_type == "invoice.payment_failed":
        topup = TopUp.objects.get(pk=topup_id)
        if topup.automatic and topups.fail(topup_id, "the payment failed (Stripe invoice.payment_failed)"):
            return f"top-up {topup_id}: failed"
        return f"top-up {topup_id}: payment attempt failed, still open"
    return f"top-up {topup_id}: {apply_invoice(topup_id, stripe_invoice)}"
