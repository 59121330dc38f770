"""Stripe: push finalized invoices to Stripe, take Stripe's status changes back, reconcile (DESIGN §7).

Push (:func:`sync_invoice`): the tenant's Stripe customer (created once), a draft Stripe invoice with one
invoice item per line of ours (minor units, our ids in metadata), a check that Stripe's total equals ours,
then finalization. Every POST carries an idempotency key derived from our ids, and every step first looks for
what an earlier, interrupted run already made, so running it again — after a timeout, a crash, a lost answer —
carries on where it stopped and never makes a second invoice. The keys cover the first 24 hours (including
Stripe's search lag); after that, when Stripe has forgotten them, the lookups do (consistent lists by
customer and by invoice for invoices and items, search for the customer).

Back (:func:`apply_stripe_status`): forward only, along the database trigger's graph (migration 0002):
open → paid | void | uncollectible, uncollectible → paid | void. Webhook events (:func:`process_event`) are
stored by id in the same transaction as their effect, so a redelivery changes nothing. An event moves an invoice
only if Stripe's invoice in it is a copy of ours (the tenant's customer, our currency, our total); one that only
names ours is stored "held for review".

Decisions, with the reasoning in docs/stripe.md: ``collection_method=send_invoice`` with 30 days to pay;
drafts are created with ``auto_advance=false`` (Stripe never finalizes a half-built draft) and finalized with
``auto_advance=true`` (Stripe emails it and sends reminders); every line is sent, zero amounts included, so
the Stripe invoice reads like ours; a Stripe total that differs from ours stops the sync before finalization.
An invoice taxed by Stripe Tax (decision 019) is created with automatic tax, its customer given the billing
profile's address, and its items are the Tax Calculation's line items (:func:`_items`), so Stripe's tax is the
calculation's and the totals agree as they do otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import invoice_events, periods, tax_calculation
from billing.models import PAYMENT_TERMS, Invoice, InvoiceLine
from billing.pricing import to_minor_units
from observability import metrics
from payments.models import StripeEvent
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Worth retrying: the request may not have run, or Stripe asked us to come back (connection errors and
# timeouts, 429, 409 and 5xx — the SDK maps the last two to APIError). Anything else is a refusal.
TRANSIENT_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
)
NETWORK_RETRIES = 2  # the SDK's own retries of one request, under the same idempotency key
DEFAULT_TIMEOUT_SECONDS = 30
DAYS_UNTIL_DUE = PAYMENT_TERMS.days  # the terms our own invoice states (Invoice.due_on)
UNSYNCED_GRACE = timedelta(minutes=5)  # the on-commit task normally gets there first
STALE_PENDING = timedelta(minutes=30)  # longer than the task's own retries (about 17 min with backoff)
ERROR_MAX_CHARS = 2000
# Stripe's tax code for what is not taxed (under Stripe Tax: prepaid credit applied).
NONTAXABLE = "txcd_00000000"

Status = Invoice.Status
SyncState = Invoice.SyncState
# Our status follows Stripe's only along the trigger's forward edges.
FORWARD = {
    Status.OPEN: {Status.PAID, Status.VOID, Status.UNCOLLECTIBLE},
    Status.UNCOLLECTIBLE: {Status.PAID, Status.VOID},
}
# Stripe's own statuses in the order an invoice moves through them (paid and void are both final).
STRIPE_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
# The webhook events that move an invoice, and the Stripe status each one reports.
EVENT_STATUS = {
    "invoice.paid": "paid",
    "invoice.payment_failed": "open",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
}


# The outcome of an event that names one of our invoices but is not a copy of it (the admin filters on it).
HELD_FOR_REVIEW = "held for review"
T = TypeVar("T")


class SyncMismatch(Exception):
    """Stripe's copy disagrees with ours in a way a retry cannot fix; a person has to look."""


def is_configured() -> bool:
    return bool(settings.STRIPE_API_KEY)


def namespace() -> str:
    """Prefix of our idempotency keys and tag in our metadata: deployments sharing one Stripe account (staging,
    a developer's laptop, the smoke script) must set different ones, or they would replay each other's keys."""
    return getattr(settings, "STRIPE_NAMESPACE", "") or "meterline"


def client() -> stripe.StripeClient:
    """The StripeClient for the current settings (``STRIPE_API_BASE`` points it at a test double)."""
    return _client(
        settings.STRIPE_API_KEY,
        settings.STRIPE_API_BASE,
        float(getattr(settings, "STRIPE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS)),
    )


@lru_cache(maxsize=8)
def _client(api_key: str, api_base: str, timeout: float) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def idempotency_key(*parts: object) -> str:
    """``meterline-invoice-42``, ``meterline-item-42-3``: the same request always gets the same key."""
    return "-".join([namespace(), *(str(part) for part in parts)])


def key_options(*key_parts: object) -> dict[str, str]:
    return {"idempotency_key": idempotency_key(*key_parts)}


def our_metadata(**ids: object) -> dict[str, str]:
    return {"meterline_namespace": namespace(), **{f"meterline_{k}": str(v) for k, v in ids.items()}}


def plain(value: Any) -> Any:
    """A StripeObject as the dict it holds (in stripe-python 16 it is no longer a dict itself)."""
    return value.to_dict() if isinstance(value, stripe.StripeObject) else value


def is_ours(metadata: Any, name: str, value: object) -> bool:
    metadata = plain(metadata)
    return (
        isinstance(metadata, dict)
        and metadata.get("meterline_namespace") == namespace()
        and metadata.get(f"meterline_{name}") == str(value)
    )


def sync_invoice(invoice_id: int) -> str:
    """Push one finalized invoice to Stripe; safe to run again at any point. Returns the sync state.

    Transient Stripe errors are recorded on the invoice and re-raised for the caller (the Celery task) to retry;
    any other Stripe error, or Stripe disagreeing with our total, marks the sync ``failed`` with the message.
    Only open invoices are sent: one paid or voided here before it reached Stripe is not billed there.
    """
    invoice = Invoice.objects.select_related("tenant").get(pk=invoice_id)
    if not is_configured() or invoice.sync_state == SyncState.SYNCED:
        return invoice.sync_state
    if invoice.status != Status.OPEN and not invoice.stripe_invoice_id:
        return invoice.sync_state
    _record(invoice_id, sync_state=SyncState.PENDING, sync_attempted_at=timezone.now())
    stripe_invoice = attempt(
        lambda: _push(client(), invoice),
        lambda **fields: _record(invoice_id, **fields),
        f"invoice {invoice_id}",
    )
    if stripe_invoice is None:
        return SyncState.FAILED
    _record(
        invoice_id,
        sync_state=SyncState.SYNCED,
        sync_error="",
        synced_at=timezone.now(),
        stripe_invoice_id=stripe_invoice.id,
        hosted_invoice_url=hosted_url(stripe_invoice),
    )
    # A Stripe invoice with nothing to collect is paid on finalization.
    apply_stripe_status(invoice_id, stripe_invoice.status)
    logger.info(
        "synced invoice %s to Stripe %s (%s)", invoice.number, stripe_invoice.id, stripe_invoice.status
    )
    return SyncState.SYNCED


def attempt(push: Callable[[], T], record: Callable[..., None], what: str) -> T | None:
    """Run one push to Stripe (an invoice's, a credit note's) and record how it went wrong, if it did: a
    transient error is recorded (the sync stays pending) and re-raised for the Celery task to retry; any other
    Stripe error, or Stripe disagreeing with us, is recorded as ``failed`` with the message, and None returned.
    ``record`` writes the sync columns (``sync_state``, ``sync_error``) of what is pushed."""
    try:
        return push()
    except TRANSIENT_ERRORS as error:
        record(sync_error=f"{describe(error)} (will retry)"[:ERROR_MAX_CHARS])
        metrics.record_stripe_sync_failure("transient")
        raise
    except (stripe.StripeError, SyncMismatch) as error:
        logger.warning("Stripe sync of %s failed: %s", what, describe(error))
        record(sync_state=SyncState.FAILED, sync_error=describe(error)[:ERROR_MAX_CHARS])
        metrics.record_stripe_sync_failure("permanent")
        return None


def _push(api: stripe.StripeClient, invoice: Invoice) -> stripe.Invoice:
    customer_id = ensure_customer(api, invoice.tenant)
    if invoice.stripe_tax_calculation_id:
        _ensure_tax_address(api, invoice, customer_id)
    stripe_invoice = _find_invoice(api, invoice, customer_id) or _create_invoice(api, invoice, customer_id)
    _record(invoice.pk, stripe_invoice_id=stripe_invoice.id)
    expected = to_minor_units(invoice.total, invoice.currency)
    if stripe_invoice.status == "draft":
        if invoice.status != Status.OPEN:
            raise SyncMismatch(
                f"invoice {invoice.number} is {invoice.status} here; Stripe draft {stripe_invoice.id} was left "
                "unfinalized"
            )
        _add_items(api, invoice, stripe_invoice.id, customer_id)
        draft = api.v1.invoices.retrieve(stripe_invoice.id)
        if draft.total != expected:
            raise SyncMismatch(
                f"Stripe draft {draft.id} totals {draft.total} minor units of {invoice.currency}, ours "
                f"{expected}; it was not finalized"
            )
        stripe_invoice = api.v1.invoices.finalize_invoice(
            stripe_invoice.id, {"auto_advance": True}, key_options("finalize", invoice.pk)
        )
    if stripe_invoice.total != expected:
        raise SyncMismatch(
            f"Stripe invoice {stripe_invoice.id} ({stripe_invoice.status}) totals {stripe_invoice.total} minor "
            f"units of {invoice.currency}, ours {expected}"
        )
    return stripe_invoice


def ensure_customer(api: stripe.StripeClient, tenant: Tenant) -> str:
    """The tenant's Stripe customer id, creating the customer the first time (once, however often this runs).

    The create request carries only what never changes (our ids), so its idempotency key can be replayed after
    a rename; name and billing email follow in an update whose key includes a digest of them. The id is stored
    only once both are done, so an interrupted run repeats both.
    """
    if tenant.stripe_customer_id:
        return tenant.stripe_customer_id
    query = (
        f"metadata['meterline_tenant_id']:'{tenant.pk}' AND metadata['meterline_namespace']:'{namespace()}'"
    )
    found = api.v1.customers.search({"query": query, "limit": 1}).data
    customer = (
        found[0]
        if found
        else api.v1.customers.create(
            {"metadata": our_metadata(tenant_id=tenant.pk)}, key_options("customer", tenant.pk)
        )
    )
    details = {"name": tenant.name, "email": tenant.billing_email}
    if (customer.name or "", customer.email or "") != (details["name"], details["email"]):
        digest = hashlib.sha256(json.dumps(details, sort_keys=True).encode()).hexdigest()[:16]
        api.v1.customers.update(customer.id, details, key_options("customer", tenant.pk, "details", digest))
    Tenant.objects.filter(pk=tenant.pk, stripe_customer_id="").update(stripe_customer_id=customer.id)
    tenant.refresh_from_db(fields=["stripe_customer_id"])
    return tenant.stripe_customer_id


def _ensure_tax_address(api: stripe.StripeClient, invoice: Invoice, customer_id: str) -> None:
    """Stripe Tax taxes an invoice where its customer is: the Stripe customer gets the address the calculation
    used (kept on the tax line, whatever the billing profile says since), under a key with a digest of it (the
    same address is sent once)."""
    tax_line = (
        invoice.scoped("lines")
        .filter(kind=InvoiceLine.Kind.TAX, code=tax_calculation.STRIPE_TAX_CODE)
        .first()
    )
    address = (tax_line.price_snapshot if tax_line else {}).get("address")
    if not address:
        raise SyncMismatch(f"invoice {invoice.number} has no Stripe Tax address on its tax line")
    address = {key: value for key, value in address.items() if value}
    digest = hashlib.sha256(json.dumps(address, sort_keys=True).encode()).hexdigest()[:16]
    api.v1.customers.update(
        customer_id, {"address": address}, key_options("customer", invoice.tenant_id, "address", digest)
    )


def _find_invoice(api: stripe.StripeClient, invoice: Invoice, customer_id: str) -> stripe.Invoice | None:
    """The Stripe invoice an earlier run made for ``invoice``: by the stored id, else by our metadata among the
    customer's invoices (a list, which unlike search sees an invoice the moment it exists)."""
    if invoice.stripe_invoice_id:
        return api.v1.invoices.retrieve(invoice.stripe_invoice_id)
    listed = api.v1.invoices.list({"customer": customer_id, "limit": 100})
    for candidate in listed.auto_paging_iter():
        if is_ours(candidate.metadata, "invoice_id", invoice.pk):
            return candidate
    return None


def _create_invoice(api: stripe.StripeClient, invoice: Invoice, customer_id: str) -> stripe.Invoice:
    return api.v1.invoices.create(
        {
            "customer": customer_id,
            "currency": invoice.currency.lower(),
            "collection_method": "send_invoice",
            "days_until_due": DAYS_UNTIL_DUE,
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            **({"automatic_tax": {"enabled": True}} if invoice.stripe_tax_calculation_id else {}),
            "description": f"Meterline invoice {invoice.number}, {invoice.period_start:%B %Y}",
            "metadata": our_metadata(
                invoice_id=invoice.pk, invoice_number=invoice.number, tenant_id=invoice.tenant_id
            ),
        },
        key_options("invoice", invoice.pk),
    )


def _add_items(api: stripe.StripeClient, invoice: Invoice, stripe_invoice_id: str, customer_id: str) -> None:
    """One invoice item per line of ours, skipping the lines an earlier run already added."""
    listed = api.v1.invoice_items.list({"invoice": stripe_invoice_id, "limit": 100})
    present = {
        plain(item.metadata).get("meterline_line_position")
        for item in listed.auto_paging_iter()
        if is_ours(item.metadata, "invoice_id", invoice.pk)
    }
    for line, params in _items(invoice, stripe_invoice_id, customer_id):
        if str(line.position) in present:
            continue
        api.v1.invoice_items.create(params, key_options("item", invoice.pk, line.position))


def _items(invoice: Invoice, stripe_invoice_id: str, customer_id: str) -> list[tuple[InvoiceLine, dict]]:
    """Each line of ours as an invoice item. Under Stripe Tax (the invoice has a calculation), Stripe must tax its
    invoice exactly as it taxed the calculation, so the items are the calculation's line items: each sale at its
    taxed amount (its share of discounts and corrections taken off, billing.tax_calculation.taxable_lines) under
    our tax code, the lines that are not sales (prepaid credit) as non-taxable items, and no tax item: Stripe
    adds the tax itself (automatic tax)."""
    lines = list(invoice.scoped("lines").order_by("position"))
    if not invoice.stripe_tax_calculation_id:
        return [(line, _item_params(invoice, line, stripe_invoice_id, customer_id)) for line in lines]
    shares = {line.pk: share for line, share in tax_calculation.taxable_lines(lines, invoice.currency)}
    items = []
    for line in lines:
        if line.kind == InvoiceLine.Kind.TAX:
            continue
        params = _item_params(invoice, line, stripe_invoice_id, customer_id)
        if line.pk in shares:
            share = shares[line.pk]
            if share != line.amount:
                params["amount"] = to_minor_units(share, invoice.currency)
                params["description"] = (
                    f"{line.description} ({line.amount} {invoice.currency} on our invoice; "
                    "discounts and corrections spread over the taxed lines)"
                )[:500]
            params.update(tax_behavior="exclusive", tax_code=settings.STRIPE_TAX_CODE)
        else:
            params.update(tax_behavior="exclusive", tax_code=NONTAXABLE)
        items.append((line, params))
    return items


def _item_params(invoice: Invoice, line: InvoiceLine, stripe_invoice_id: str, customer_id: str) -> dict:
    tz = invoice.tenant.timezone
    return {
        "customer": customer_id,
        "invoice": stripe_invoice_id,
        "currency": invoice.currency.lower(),
        "amount": to_minor_units(line.amount, invoice.currency),
        "description": line.description,
        "period": {
            "start": int(periods.local_midnight(line.segment_start, tz).timestamp()),
            "end": int(periods.local_midnight(line.segment_end, tz).timestamp()),
        },
        "metadata": our_metadata(invoice_id=invoice.pk, line_id=line.pk, line_position=line.position),
    }


def hosted_url(stripe_invoice: stripe.Invoice) -> str:
    """Stripe's payment page for the invoice (it exists once the invoice is finalized), "" if none or odd."""
    url = getattr(stripe_invoice, "hosted_invoice_url", None)
    return url if isinstance(url, str) and url.startswith("https://") and len(url) <= 2048 else ""


def _record(invoice_id: int, **fields: Any) -> None:
    """Write sync columns only (a queryset update, so a concurrent webhook's status change is never
    overwritten; the trigger lets these change on finalized invoices)."""
    Invoice.objects.filter(pk=invoice_id).update(**fields)


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def mark_for_retry(invoice_ids: Iterable[int]) -> list[int]:
    """The admin's 'retry sync': of these invoices, the finalized ones not yet synced, set back to pending.
    Returns the ids to queue (none while Stripe is not configured)."""
    if not is_configured():
        return []
    retry = (
        Invoice.objects.filter(pk__in=list(invoice_ids))
        .exclude(status=Status.DRAFT)
        .exclude(sync_state=SyncState.SYNCED)
        .filter(Q(status=Status.OPEN) | ~Q(stripe_invoice_id=""))
    )
    ids = list(retry.values_list("pk", flat=True))
    Invoice.objects.filter(pk__in=ids).update(sync_state=SyncState.PENDING, sync_attempted_at=timezone.now())
    return ids


def apply_stripe_status(invoice_id: int, stripe_status: str, *, now: datetime | None = None) -> str:
    """Move our invoice forward to what Stripe reports, never back. Returns what was done, in words."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        return _move_forward(invoice, stripe_status, now or timezone.now())


def _move_forward(invoice: Invoice, stripe_status: str, now: datetime) -> str:
    """``invoice`` is locked by the caller."""
    fields: dict[str, Any] = {}
    if STRIPE_RANK.get(stripe_status, -1) > STRIPE_RANK.get(invoice.stripe_status, -1):
        fields["stripe_status"] = stripe_status
    moves = stripe_status in FORWARD.get(invoice.status, set())
    if moves:
        fields.update(status=stripe_status, status_changed_at=now)
    if fields:
        try:
            with transaction.atomic():
                Invoice.objects.filter(pk=invoice.pk).update(**fields)
        except IntegrityError as error:  # the trigger refused: our view of the invoice was stale
            return f"refused by the database: {error}"[:200]
    if moves:
        previous = invoice.status
        invoice.status, invoice.status_changed_at = stripe_status, now
        invoice_events.record(invoice, invoice_events.STATUS_EVENTS[stripe_status])
        return f"moved {previous} → {stripe_status}"
    return f"kept {invoice.status}: Stripe reports {stripe_status}"


def process_event(event: dict[str, Any]) -> str:
    """Store a verified webhook event by id and apply it, in one transaction. An id already stored is a
    no-op (redelivery); events of other types, and invoices that are not ours, are stored and acknowledged."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                stored = StripeEvent.objects.create(event_id=event["id"], type=event["type"], payload=event)
        except IntegrityError:
            return "duplicate: already processed"
        outcome, invoice = _apply_event(event)
        stored.outcome, stored.invoice, stored.processed_at = outcome[:200], invoice, timezone.now()
        stored.save(update_fields=["outcome", "invoice", "processed_at"])
    logger.info("Stripe event %s %s: %s", event["id"], event["type"], outcome)
    return outcome


# Handlers of the other event types we act on (``credit_note.created``): each is called with the verified event
# and returns what it did and the invoice it concerns. Registered in ready().
_event_handlers: dict[str, Callable[[dict[str, Any]], tuple[str, Invoice | None]]] = {}


def register_event_handler(
    event_type: str, handler: Callable[[dict[str, Any]], tuple[str, Invoice | None]]
) -> None:
    _event_handlers[event_type] = handler


# Handlers for Stripe invoices that are not copies of our invoices (top-ups): called with the event type and
# Stripe's invoice, each returns what it did, or None when the invoice is not its own. Registered in ready().
_other_invoice_handlers: list[Callable[[str, dict[str, Any]], str | None]] = []


def register_invoice_handler(handler: Callable[[str, dict[str, Any]], str | None]) -> None:
    if handler not in _other_invoice_handlers:
        _other_invoice_handlers.append(handler)


def _apply_event(event: dict[str, Any]) -> tuple[str, Invoice | None]:
    if (handler := _event_handlers.get(event["type"])) is not None:
        return handler(event)
    stripe_status = EVENT_STATUS.get(event["type"])
    if stripe_status is None:
        return "ignored: not an event we act on", None
    data = event.get("data")
    stripe_invoice = data.get("object") if isinstance(data, dict) else None
    if isinstance(stripe_invoice, dict):
        for handler in _other_invoice_handlers:
            if (outcome := handler(event["type"], stripe_invoice)) is not None:
                return outcome, None
    invoice = _our_invoice(stripe_invoice) if isinstance(stripe_invoice, dict) else None
    if invoice is None:
        return "ignored: not one of our invoices", None
    if mismatch := _mismatch(invoice, stripe_invoice):
        logger.warning(
            "Stripe event %s names invoice %s but does not match it, held for review: %s",
            event["id"],
            invoice.number,
            mismatch,
        )
        return f"{HELD_FOR_REVIEW}: {mismatch}", invoice
    if event["type"] == invoice_events.INVOICE_PAYMENT_FAILED:
        # Our status stays open; the tenant hears of the failed attempt (once: the event id is stored).
        invoice_events.record(invoice, invoice_events.INVOICE_PAYMENT_FAILED)
    return _move_forward(invoice, stripe_status, timezone.now()), invoice


def _mismatch(invoice: Invoice, stripe_invoice: dict[str, Any]) -> str | None:
    """Why Stripe's invoice in a signed event is not a copy of ``invoice``, or None when it is: the tenant's
    Stripe customer, our currency and our total. Our metadata alone proves nothing (anyone with access to the
    account can write it on any invoice), so an event that names an invoice but fails this moves nothing.

    ``total`` is compared, not ``amount_due``: a customer's credit balance (a negative earlier invoice) lowers
    what is due without changing what was billed. Without a customer id on record (the sync has not stored it
    yet) nothing can be vouched for; the sync's own check and reconcile bring a genuine status later."""
    customer = stripe_invoice.get("customer")
    if isinstance(customer, dict):  # expanded
        customer = customer.get("id")
    theirs = str(customer)[:40]
    expected_customer = invoice.tenant.stripe_customer_id
    if not expected_customer:
        return f"the tenant has no Stripe customer on record (the event's is {theirs})"
    if customer != expected_customer:
        return f"Stripe customer {theirs} is not the tenant's {expected_customer}"
    currency, ours = stripe_invoice.get("currency"), invoice.currency.lower()
    if not isinstance(currency, str) or currency.lower() != ours:
        return f"currency {str(currency)[:10]} is not ours ({ours})"
    total, expected = stripe_invoice.get("total"), to_minor_units(invoice.total, invoice.currency)
    if type(total) is not int or total != expected:
        return f"Stripe total {str(total)[:20]} is not ours ({expected} minor units)"
    return None


def _our_invoice(stripe_invoice: dict[str, Any]) -> Invoice | None:
    """Ours, locked: by the Stripe id the sync stored, or by our metadata when the event overtook the sync."""
    stripe_id = stripe_invoice.get("id")
    locked = Invoice.objects.select_for_update()
    if isinstance(stripe_id, str) and stripe_id:
        invoice = locked.filter(stripe_invoice_id=stripe_id).first()
        if invoice is not None:
            return invoice
    metadata = stripe_invoice.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("meterline_namespace") != namespace():
        return None
    our_id = metadata.get("meterline_invoice_id")
    if not (isinstance(our_id, str) and our_id.isdigit()):
        return None
    invoice = locked.filter(pk=int(our_id)).exclude(status=Status.DRAFT).first()
    if invoice is None or invoice.stripe_invoice_id not in ("", stripe_id):
        return None
    return invoice


def invoices_to_sync(now: datetime, limit: int = 500) -> list[int]:
    """Open invoices that never reached Stripe: never queued (finalized while Stripe was not configured, or the
    task was lost) or stuck pending (a worker died, or the task gave up its retries during an outage).
    Failed syncs wait for a person ('retry sync' in the admin)."""
    stuck = Q(sync_state=SyncState.PENDING) & (
        Q(sync_attempted_at__lte=now - STALE_PENDING) | Q(sync_attempted_at__isnull=True)
    )
    never = Q(sync_state=SyncState.NOT_SYNCED, finalized_at__lte=now - UNSYNCED_GRACE)
    candidates = Invoice.objects.filter(never | stuck).filter(
        Q(status=Status.OPEN) | ~Q(stripe_invoice_id="")
    )
    return list(candidates.order_by("finalized_at").values_list("pk", flat=True)[:limit])


def refresh_statuses(limit: int = 500) -> int:
    """Ask Stripe for the status of synced invoices that can still move and apply it forward: this repairs
    missed webhooks. Returns how many of ours moved; an error on one invoice does not stop the others."""
    api = client()
    moved = 0
    candidates = (
        Invoice.objects.filter(sync_state=SyncState.SYNCED, status__in=list(FORWARD))
        .exclude(stripe_invoice_id="")
        .order_by("finalized_at")
    )
    for invoice_id, stripe_invoice_id in candidates.values_list("pk", "stripe_invoice_id")[:limit]:
        try:
            stripe_invoice = api.v1.invoices.retrieve(stripe_invoice_id)
        except stripe.StripeError as error:
            logger.warning("reconcile: could not read Stripe invoice %s: %s", stripe_invoice_id, error)
            continue
        if url := hosted_url(stripe_invoice):  # invoices synced before the link was kept get it here
            Invoice.objects.filter(pk=invoice_id, hosted_invoice_url="").update(hosted_invoice_url=url)
        if apply_stripe_status(invoice_id, stripe_invoice.status).startswith("moved"):
            moved += 1
    return moved
