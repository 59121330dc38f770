"""Response bodies: Stripe's official example object for each resource, overlaid with the double's state.

``fixtures3.json`` is Stripe's own fixture file (stripe/openapi, MIT; see README.md here) — the objects Stripe's
mock server answers with. Every response starts as a deep copy of the example for its resource, so it has exactly
the fields the current API returns; ``overlay`` refuses a field the example lacks, which keeps the double from
inventing fields (or keeping ones a newer API version dropped).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from . import tax as stripe_tax

FIXTURES_PATH = Path(__file__).with_name("fixtures3.json")


@cache
def _examples() -> dict[str, Any]:
    return json.loads(FIXTURES_PATH.read_text())["resources"]


def example(resource: str) -> dict[str, Any]:
    return copy.deepcopy(_examples()[resource])


def overlay(obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(obj))
    if unknown:
        raise KeyError(f"{obj.get('object')} example has no field(s) {unknown}")
    obj.update(fields)
    return obj


def _api_version() -> str | None:
    try:
        import stripe
    except ImportError:
        return None
    return stripe.api_version


def customer(record: dict[str, Any]) -> dict[str, Any]:
    return overlay(
        example("customer"),
        id=record["id"],
        address=record["address"],
        balance=0,
        invoice_settings={
            **example("customer")["invoice_settings"],
            "default_payment_method": record.get("default_payment_method"),
        },
        created=record["created"],
        currency=record["currency"],
        default_source=None,
        delinquent=False,
        description=record["description"],
        discount=None,
        email=record["email"],
        invoice_prefix=record["invoice_prefix"],
        livemode=False,
        metadata=dict(record["metadata"]),
        name=record["name"],
        next_invoice_sequence=record["next_invoice_sequence"],
        phone=record["phone"],
        preferred_locales=list(record["preferred_locales"]),
        shipping=None,
        tax_exempt=record["tax_exempt"],
        test_clock=None,
    )


def deleted(resource: str, object_id: str) -> dict[str, Any]:
    return {"id": object_id, "object": resource, "deleted": True}


def _decimal_text(number: Decimal) -> str:
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _charge_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The fields an invoice item and the invoice line it becomes have in common."""
    return {
        "amount": record["amount"],
        "currency": record["currency"],
        "description": record["description"],
        "discountable": True,
        "discounts": [],
        "invoice": record["invoice"],
        "livemode": False,
        "metadata": dict(record["metadata"]),
        "period": dict(record["period"]),
        "pricing": {
            "type": "price_details",
            "unit_amount_decimal": _decimal_text(record["unit_amount_decimal"]),
        },
        "quantity": int(record["quantity"]),
        "quantity_decimal": _decimal_text(record["quantity"]),
    }


def invoice_item(record: dict[str, Any]) -> dict[str, Any]:
    return overlay(
        example("invoiceitem"),
        **_charge_fields(record),
        id=record["id"],
        customer=record["customer"],
        customer_account=None,
        date=record["created"],
        net_amount=record["amount"],
        parent=None,
        proration=False,
        tax_rates=[],
        test_clock=None,
    )


@dataclass(frozen=True)
class InvoiceTax:
    """Automatic tax on an invoice: its ``automatic_tax.status``, the address it was computed for, each item's
    tax (by item id) and the country's rate (None: not collected there)."""

    status: str
    address: dict[str, Any]
    per_item: dict[str, int] = field(default_factory=dict)
    percent: Decimal | None = None

    def exclusive_amount(self, items: list[dict[str, Any]]) -> int:
        return sum(self.per_item.get(i["id"], 0) for i in items if i["tax_behavior"] != "inclusive")

    def taxes_of(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stripe's ``taxes`` of lines (and ``total_taxes`` of the invoice, summed by behavior)."""
        country = (self.address.get("country") or "").upper()
        rows = []
        for item in items:
            taxed = self.percent is not None and item["tax_code"] != stripe_tax.NONTAXABLE
            rows.append(
                {
                    "amount": self.per_item.get(item["id"], 0),
                    "tax_behavior": "inclusive" if item["tax_behavior"] == "inclusive" else "exclusive",
                    "tax_rate_details": {"tax_rate": stripe_tax.tax_rate_id(country)} if taxed else None,
                    "taxability_reason": "standard_rated"
                    if taxed
                    else ("product_exempt" if self.percent is not None else "not_collecting"),
                    "taxable_amount": item["amount"]
                    - (self.per_item.get(item["id"], 0) if item["tax_behavior"] == "inclusive" else 0),
                    "type": "tax_rate_details",
                }
            )
        return rows


def line_item(record: dict[str, Any], taxes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The invoice line that an invoice item becomes once it is on an invoice (ids ``il_…``)."""
    return overlay(
        example("line_item"),
        **_charge_fields(record),
        id=record["line_id"],
        discount_amounts=[],
        parent={
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": record["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        pretax_credit_amounts=[],
        subscription=None,
        subtotal=record["amount"],
        taxes=taxes or [],
    )


def list_page(url: str, data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


INVOICE_LINES_INLINE = 10


def invoice(
    record: dict[str, Any],
    items: list[dict[str, Any]],
    customer_record: dict[str, Any],
    taxed: InvoiceTax | None = None,
) -> dict[str, Any]:
    """``items`` are the invoice items on this invoice, oldest first; the total is their sum plus the exclusive
    tax of automatic tax (``taxed``; no discounts). Credit notes issued before payment lower what is due; those
    after it are counted apart (Stripe's ``pre_payment_credit_notes_amount`` and
    ``post_payment_credit_notes_amount``)."""
    subtotal = sum(item["amount"] for item in items)
    line_taxes = [[row] for row in taxed.taxes_of(items)] if taxed else [[] for _ in items]
    added = taxed.exclusive_amount(items) if taxed else 0
    included = (
        sum(taxed.per_item.get(i["id"], 0) for i in items if i["tax_behavior"] == "inclusive") if taxed else 0
    )
    total = subtotal + added
    amount_due = max(total - record["pre_payment_credit"], 0)
    status = record["status"]
    contact = record["customer_snapshot"] or snapshot_of(customer_record)
    transitions = record["status_transitions"]
    finalized = status != "draft"
    lines = [line_item(item, taxes) for item, taxes in zip(items, line_taxes, strict=True)]
    return overlay(
        example("invoice"),
        id=record["id"],
        account_tax_ids=None,
        amount_due=amount_due,
        amount_overpaid=0,
        amount_paid=record["amount_paid"],
        amount_remaining=max(amount_due - record["amount_paid"], 0),
        amount_shipping=0,
        attempt_count=record.get("attempt_count", 0),
        attempted=record.get("attempt_count", 0) > 0,
        auto_advance=record["auto_advance"],
        automatic_tax={
            "enabled": taxed is not None,
            "liability": {"type": "self"} if taxed else None,
            "status": taxed.status if taxed else None,
            "disabled_reason": None,
            "provider": "stripe" if taxed else None,
        },
        automatically_finalizes_at=record["created"] + 3600
        if status == "draft" and record["auto_advance"]
        else None,
        billing_reason="manual",
        collection_method=record["collection_method"],
        created=record["created"],
        currency=record["currency"],
        custom_fields=None,
        customer=record["customer"],
        customer_account=None,
        customer_address=contact["address"],
        customer_email=contact["email"],
        customer_name=contact["name"],
        customer_phone=contact["phone"],
        customer_shipping=None,
        customer_tax_exempt=contact["tax_exempt"],
        customer_tax_ids=[],
        default_payment_method=None,
        default_source=None,
        default_tax_rates=[],
        description=record["description"],
        discounts=[],
        due_date=record["due_date"],
        effective_at=transitions["finalized_at"],
        ending_balance=0 if finalized else None,
        footer=None,
        from_invoice=None,
        hosted_invoice_url=f"https://invoice.stripe.com/i/acct_double/test_{record['id']}"
        if finalized
        else None,
        invoice_pdf=f"https://pay.stripe.com/invoice/acct_double/test_{record['id']}/pdf"
        if finalized
        else None,
        issuer={"type": "self"},
        last_finalization_error=None,
        latest_revision=None,
        lines=list_page(
            f"/v1/invoices/{record['id']}/lines",
            lines[:INVOICE_LINES_INLINE],
            len(lines) > INVOICE_LINES_INLINE,
        ),
        livemode=False,
        metadata=dict(record["metadata"]),
        next_payment_attempt=None,
        number=record["number"],
        on_behalf_of=None,
        parent=None,
        payment_settings={
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        period_end=record["created"],
        period_start=record["created"],
        post_payment_credit_notes_amount=record["post_payment_credit"],
        pre_payment_credit_notes_amount=record["pre_payment_credit"],
        receipt_number=None,
        shipping_cost=None,
        shipping_details=None,
        starting_balance=0,
        statement_descriptor=None,
        status=status,
        status_transitions=dict(transitions),
        subscription=None,
        subtotal=subtotal,
        subtotal_excluding_tax=subtotal - included,
        test_clock=None,
        total=total,
        total_discount_amounts=[],
        total_excluding_tax=subtotal - included,
        total_pretax_credit_amounts=[],
        total_taxes=_summed_taxes(row for rows in line_taxes for row in rows),
        webhooks_delivered_at=record["created"],
    )


def _summed_taxes(rows) -> list[dict[str, Any]]:
    """An invoice's ``total_taxes``: its lines' taxes summed per tax rate and behavior."""
    summed: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["tax_behavior"], json.dumps(row["tax_rate_details"]), row["taxability_reason"])
        if key in summed:
            summed[key]["amount"] += row["amount"]
            summed[key]["taxable_amount"] += row["taxable_amount"]
        else:
            summed[key] = dict(row)
    return list(summed.values())


def credit_note_line(record: dict[str, Any]) -> dict[str, Any]:
    custom = record["type"] == "custom_line_item"
    return overlay(
        example("credit_note_line_item"),
        amount=record["amount"],
        description=record["description"],
        discount_amount=0,
        discount_amounts=[],
        id=record["id"],
        invoice_line_item=None if custom else record["invoice_line_item"],
        livemode=False,
        quantity=record["quantity"],
        tax_rates=[],
        type=record["type"],
        unit_amount=record["unit_amount"] if custom else None,
        unit_amount_decimal=str(record["unit_amount"]) if custom else None,
        pretax_credit_amounts=[],
        taxes=[],
        metadata={},
    )


def credit_note(record: dict[str, Any]) -> dict[str, Any]:
    """A credit note: ``pre_payment_amount`` lowered what the invoice had left to pay, ``post_payment_amount``
    (paid invoices) went to ``refunds`` and ``out_of_band_amount``."""
    pre, post = record["pre_payment_amount"], record["post_payment_amount"]
    refunds = (
        [
            {
                "amount_refunded": record["refund_amount"],
                "refund": record["refund"],
                "payment_record_refund": None,
                "type": "refund",
            }
        ]
        if record["refund"]
        else []
    )
    return overlay(
        example("credit_note"),
        amount=record["total"],
        amount_shipping=0,
        created=record["created"],
        currency=record["currency"],
        customer=record["customer"],
        customer_account=None,
        customer_balance_transaction=None,
        discount_amount=0,
        discount_amounts=[],
        effective_at=record["created"],
        id=record["id"],
        invoice=record["invoice"],
        lines=list_page(
            f"/v1/credit_notes/{record['id']}/lines", [credit_note_line(x) for x in record["lines"]], False
        ),
        livemode=False,
        memo=record["memo"],
        metadata=dict(record["metadata"]),
        number=record["number"],
        out_of_band_amount=record["out_of_band_amount"] or None,
        pdf=f"https://pay.stripe.com/credit_notes/acct_double/test_{record['id']}/pdf",
        post_payment_amount=post,
        pre_payment_amount=pre,
        pretax_credit_amounts=[],
        reason=record["reason"],
        refunds=refunds,
        shipping_cost=None,
        status="issued",
        subtotal=record["total"],
        subtotal_excluding_tax=record["total"],
        total=record["total"],
        total_excluding_tax=record["total"],
        total_taxes=[],
        type="pre_payment" if not post else ("post_payment" if not pre else "mixed"),
        voided_at=None,
    )


def refund(record: dict[str, Any]) -> dict[str, Any]:
    return overlay(
        example("refund"),
        amount=record["amount"],
        balance_transaction=None,
        charge=record["charge"],
        created=record["created"],
        currency=record["currency"],
        customer=record["customer"],
        customer_account=None,
        id=record["id"],
        metadata={},
        payment_intent=None,
        payment_method=None,
        reason=None,
        receipt_number=None,
        source_transfer_reversal=None,
        status="succeeded",
        transfer_reversal=None,
    )


def tax_calculation(record: dict[str, Any]) -> dict[str, Any]:
    """A Tax Calculation (``taxcalc_…``); its line items are kept for tests but, as on Stripe, not returned unless
    expanded (not modelled)."""
    return overlay(
        example("tax.calculation"),
        id=record["id"],
        amount_total=record["amount_total"],
        currency=record["currency"],
        customer=None,
        customer_details={
            "address": dict(record["address"]),
            "address_source": record["address_source"],
            "ip_address": None,
            "tax_ids": [],
            "taxability_override": "none",
        },
        expires_at=record["created"] + 90 * 86400,
        livemode=False,
        ship_from_details=None,
        shipping_cost=None,
        tax_amount_exclusive=record["tax_amount_exclusive"],
        tax_amount_inclusive=record["tax_amount_inclusive"],
        tax_breakdown=copy.deepcopy(record["tax_breakdown"]),
        tax_date=record["created"],
    )


def snapshot_of(customer_record: dict[str, Any]) -> dict[str, Any]:
    """The customer fields an invoice copies; live while it is a draft, frozen at finalization (as Stripe does)."""
    return {key: customer_record[key] for key in ("address", "email", "name", "phone", "tax_exempt")}


def event(
    *,
    event_id: str,
    event_type: str,
    created: int,
    data_object: dict[str, Any],
    previous_attributes: dict[str, Any] | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    livemode: bool = False,
    api_version: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": data_object}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return overlay(
        example("event"),
        id=event_id,
        api_version=api_version or _api_version(),
        created=created,
        data=data,
        livemode=livemode,
        pending_webhooks=1,
        request={"id": request_id, "idempotency_key": idempotency_key},
        type=event_type,
    )
