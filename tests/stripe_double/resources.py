"""The double's state and Stripe's rules for customers, invoice items, invoices and events.

Plain records in dicts, mutated only under the server's lock; every answer is rendered by ``objects``. The rules
follow Stripe's documented behaviour (sources in README.md): invoices move draft → open → paid | void |
uncollectible, uncollectible → paid | void, paid and void are final; items can only be added to drafts; a
finalized invoice gets its number and a frozen copy of the customer's details; a $0 invoice is paid as soon as it
is finalized; ``/pay`` on a draft finalizes it first.
"""

from __future__ import annotations

import fnmatch
import random
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from . import objects, tax
from .errors import StripeError, card_declined, invalid, missing_parameter, no_such
from .params import merge_metadata

_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class RequestContext:
    """What an event records about the API request that caused it."""

    request_id: str | None = None
    idempotency_key: str | None = None


INTERNAL = RequestContext()


_ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")


def _taxed_line(item: dict[str, Any]) -> tax.TaxedLine:
    return tax.TaxedLine(item["amount"], item["tax_behavior"], item["tax_code"])


def _round_half_up(number: Decimal) -> int:
    # Stripe: "rounding occurs after the quantity is multiplied by the decimal amount … 1.5 is rounded up to 2".
    return int(number.quantize(Decimal(1), rounding=ROUND_HALF_UP))


class Store:
    def __init__(self, now: Callable[[], int], *, seed: int | None = None):
        self.now = now
        self._random = random.Random(seed)
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.credit_notes: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.tax_calculations: dict[str, dict[str, Any]] = {}
        self.tax_rates: dict[str, Decimal] = {}  # country → percent that Stripe Tax collects there
        self.search_delay_seconds = 0

    def new_id(self, prefix: str, length: int = 24) -> str:
        return f"{prefix}_" + "".join(self._random.choices(_ID_ALPHABET, k=length))

    def emit(
        self,
        event_type: str,
        data_object: dict[str, Any],
        ctx: RequestContext,
        previous_attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        evt = objects.event(
            event_id=self.new_id("evt"),
            event_type=event_type,
            created=self.now(),
            data_object=data_object,
            previous_attributes=previous_attributes,
            request_id=ctx.request_id,
            idempotency_key=ctx.idempotency_key,
        )
        self.events[evt["id"]] = evt
        return evt

    # Customers

    def _customer(self, customer_id: str, *, param: str | None = None) -> dict[str, Any]:
        """A live customer; an unknown or deleted one is 404 in the URL, 400 when a parameter names it."""
        record = self.customers.get(customer_id)
        if record is None or record["deleted"]:
            raise no_such("customer", customer_id, param=param or "id", status=400 if param else 404)
        return record

    def create_customer(self, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        record = {
            "id": self.new_id("cus", 14),
            "created": self.now(),
            "email": fields.get("email"),
            "name": fields.get("name"),
            "description": fields.get("description"),
            "phone": fields.get("phone"),
            "address": _address(fields.get("address")),
            "metadata": merge_metadata({}, fields.get("metadata") or {}),
            "preferred_locales": fields.get("preferred_locales") or [],
            "tax_exempt": fields.get("tax_exempt") or "none",
            "currency": None,
            "invoice_prefix": "".join(self._random.choices(string.ascii_uppercase + string.digits, k=8)),
            "next_invoice_sequence": 1,
            "default_payment_method": None,
            "deleted": False,
        }
        _set_payment_method(record, fields)
        self.customers[record["id"]] = record
        rendered = objects.customer(record)
        self.emit("customer.created", rendered, ctx)
        return rendered

    def retrieve_customer(self, customer_id: str) -> dict[str, Any]:
        record = self.customers.get(customer_id)
        if record is None:
            raise no_such("customer", customer_id)
        if record["deleted"]:
            return objects.deleted("customer", customer_id)
        return objects.customer(record)

    def update_customer(
        self, customer_id: str, fields: dict[str, Any], ctx: RequestContext
    ) -> dict[str, Any]:
        record = self._customer(customer_id)
        before = objects.customer(record)
        _set_payment_method(record, fields)  # first: an unknown payment method changes nothing
        for key in ("email", "name", "description", "phone", "tax_exempt"):
            if key in fields:
                record[key] = fields[key] if key != "tax_exempt" else fields[key] or "none"
        if "address" in fields:
            record["address"] = _address(fields["address"])
        if "preferred_locales" in fields:
            record["preferred_locales"] = fields["preferred_locales"] or []
        if "metadata" in fields:
            record["metadata"] = merge_metadata(record["metadata"], fields["metadata"])
        rendered = objects.customer(record)
        self.emit("customer.updated", rendered, ctx, _changed(before, rendered))
        return rendered

    def delete_customer(self, customer_id: str, ctx: RequestContext) -> dict[str, Any]:
        record = self._customer(customer_id)
        return self._delete("customer", record, objects.customer(record), ctx)

    def list_customers(self, filters: dict[str, Any]) -> dict[str, Any]:
        records = _matching(self.customers.values(), filters, ("email",))
        return self._page("/v1/customers", "customer", records, filters, objects.customer)

    # Invoice items

    def _item(self, item_id: str) -> dict[str, Any]:
        record = self.items.get(item_id)
        if record is None or record["deleted"]:
            raise no_such("invoiceitem", item_id)
        return record

    def create_invoice_item(self, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        customer = self._customer(fields["customer"], param="customer")
        invoice = None
        if fields.get("invoice"):
            invoice = self._invoice(fields["invoice"], param="invoice")
            if invoice["customer"] != customer["id"]:
                raise invalid(
                    f"The invoice item's customer ({customer['id']}) must match the customer of invoice "
                    f"{invoice['id']} ({invoice['customer']}).",
                    param="invoice",
                )
            _require_draft(invoice, param="invoice")
        currency = fields.get("currency") or (invoice and invoice["currency"]) or customer["currency"]
        if currency is None:
            raise missing_parameter("currency")
        if invoice is not None and currency != invoice["currency"]:
            raise invalid(
                f"The currency of the invoice item ({currency}) must match the currency of the invoice "
                f"({invoice['currency']}).",
                param="currency",
            )
        quantity = Decimal(
            fields["quantity_decimal"] if "quantity_decimal" in fields else fields.get("quantity", 1)
        )
        if (
            invoice is not None
            and invoice["automatic_tax"]
            and fields.get("amount", 0) < 0
            and fields.get("tax_code") != tax.NONTAXABLE
        ):
            raise invalid(
                "The Stripe test double does not model Stripe Tax on a negative taxable invoice item (give it the "
                f"non-taxable tax code {tax.NONTAXABLE}).",
                param="amount",
                code="parameter_not_modelled",
            )
        if "amount" in fields:
            amount = fields["amount"]
            unit_amount = Decimal(amount)
        else:
            unit_amount = fields["unit_amount_decimal"]
            amount = _round_half_up(unit_amount * quantity)
        now = self.now()
        record = {
            "id": self.new_id("ii"),
            "line_id": self.new_id("il"),
            "created": now,
            "customer": customer["id"],
            "currency": currency,
            "amount": amount,
            "unit_amount_decimal": unit_amount,
            "quantity": quantity,
            "description": fields.get("description"),
            "metadata": merge_metadata({}, fields.get("metadata") or {}),
            "invoice": invoice["id"] if invoice else None,
            "period": fields.get("period") or {"start": now, "end": now},
            "tax_behavior": fields.get("tax_behavior") or "unspecified",
            "tax_code": fields.get("tax_code"),
            "deleted": False,
        }
        self.items[record["id"]] = record
        customer["currency"] = customer["currency"] or currency
        rendered = objects.invoice_item(record)
        self.emit("invoiceitem.created", rendered, ctx)
        return rendered

    def retrieve_invoice_item(self, item_id: str) -> dict[str, Any]:
        return objects.invoice_item(self._item(item_id))

    def update_invoice_item(
        self, item_id: str, fields: dict[str, Any], ctx: RequestContext
    ) -> dict[str, Any]:
        record = self._item(item_id)
        if record["invoice"] and set(fields) - {"metadata", "expand"}:
            _require_draft(self.invoices[record["invoice"]], param="invoice")
        if "description" in fields:
            record["description"] = fields["description"]
        if "metadata" in fields:
            record["metadata"] = merge_metadata(record["metadata"], fields["metadata"])
        rendered = objects.invoice_item(record)
        self.emit("invoiceitem.updated", rendered, ctx)
        return rendered

    def delete_invoice_item(self, item_id: str, ctx: RequestContext) -> dict[str, Any]:
        record = self._item(item_id)
        if record["invoice"]:
            _require_draft(self.invoices[record["invoice"]], param="invoice")
        return self._delete("invoiceitem", record, objects.invoice_item(record), ctx)

    def list_invoice_items(self, filters: dict[str, Any]) -> dict[str, Any]:
        records = _matching(self.items.values(), filters, ("customer", "invoice"))
        if "pending" in filters:
            records = [i for i in records if (i["invoice"] is None) == filters["pending"]]
        return self._page("/v1/invoiceitems", "invoiceitem", records, filters, objects.invoice_item)

    # Invoices

    def _invoice(self, invoice_id: str, *, param: str | None = None) -> dict[str, Any]:
        record = self.invoices.get(invoice_id)
        if record is None or record["deleted"]:
            raise no_such("invoice", invoice_id, param=param or "id", status=400 if param else 404)
        return record

    def items_on(self, invoice_id: str) -> list[dict[str, Any]]:
        return [i for i in self.items.values() if i["invoice"] == invoice_id and not i["deleted"]]

    def render_invoice(self, record: dict[str, Any]) -> dict[str, Any]:
        return objects.invoice(
            record, self.items_on(record["id"]), self.customers[record["customer"]], self.invoice_tax(record)
        )

    def invoice_tax(self, record: dict[str, Any]) -> objects.InvoiceTax | None:
        """Automatic tax on the invoice (tests/stripe_double/tax.py), at the address of its customer (live while
        a draft, frozen at finalization); None when it is off."""
        if not record["automatic_tax"]:
            return None
        address = (record["customer_snapshot"] or objects.snapshot_of(self.customers[record["customer"]]))[
            "address"
        ] or {}
        items = self.items_on(record["id"])
        if tax.unlocated(address):
            return objects.InvoiceTax("requires_location_inputs", address, {item["id"]: 0 for item in items})
        percent = self.tax_rates.get((address.get("country") or "").upper())
        lines = [_taxed_line(item) for item in items]
        return objects.InvoiceTax(
            "complete",
            address,
            {item["id"]: tax.line_tax(line, percent) for item, line in zip(items, lines, strict=True)},
            percent,
        )

    def total(self, record: dict[str, Any]) -> int:
        """What the invoice bills: its items and the tax automatic tax adds to them."""
        subtotal = sum(item["amount"] for item in self.items_on(record["id"]))
        taxed = self.invoice_tax(record)
        return subtotal + (taxed.exclusive_amount(self.items_on(record["id"])) if taxed else 0)

    def create_invoice(self, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        customer = self._customer(fields["customer"], param="customer")
        now = self.now()
        currency = fields.get("currency") or customer["currency"] or "usd"
        due_date = fields.get("due_date")
        if fields.get("days_until_due") is not None:
            due_date = now + fields["days_until_due"] * 86400
        record = {
            "id": self.new_id("in"),
            "created": now,
            "customer": customer["id"],
            "currency": currency,
            "status": "draft",
            "auto_advance": fields.get("auto_advance", False),
            "collection_method": fields.get("collection_method") or "charge_automatically",
            "due_date": due_date,
            "description": fields.get("description"),
            "metadata": merge_metadata({}, fields.get("metadata") or {}),
            "number": None,
            "amount_paid": 0,
            "charged": 0,  # of amount_paid, what a payment method paid (refundable); the rest was out of band
            "charge": None,
            "refunded": 0,
            "automatic_tax": bool((fields.get("automatic_tax") or {}).get("enabled")),
            "pre_payment_credit": 0,  # credit notes that lowered what was due
            "post_payment_credit": 0,  # credit notes after it was paid
            "customer_snapshot": None,
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "deleted": False,
        }
        self.invoices[record["id"]] = record
        if fields.get("pending_invoice_items_behavior") == "include":
            for item in self.items.values():
                if (
                    item["customer"] == customer["id"]
                    and item["invoice"] is None
                    and not item["deleted"]
                    and item["currency"] == currency
                ):
                    item["invoice"] = record["id"]
        customer["currency"] = customer["currency"] or currency
        rendered = self.render_invoice(record)
        self.emit("invoice.created", rendered, ctx)
        return rendered

    def retrieve_invoice(self, invoice_id: str) -> dict[str, Any]:
        return self.render_invoice(self._invoice(invoice_id))

    def update_invoice(self, invoice_id: str, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        record = self._invoice(invoice_id)
        if record["status"] != "draft":
            editable = {"metadata", "description", "expand"}
            if record["status"] in ("open", "uncollectible"):
                editable.add("auto_advance")
            refused = sorted(set(fields) - editable)
            if refused:
                raise invalid(
                    f"Finalized invoices can't be updated in this way ({refused[0]}).", param=refused[0]
                )
        before = self.render_invoice(record)
        if "metadata" in fields:
            record["metadata"] = merge_metadata(record["metadata"], fields["metadata"])
        if "description" in fields:
            record["description"] = fields["description"]
        if "auto_advance" in fields:
            record["auto_advance"] = fields["auto_advance"]
        rendered = self.render_invoice(record)
        self.emit("invoice.updated", rendered, ctx, _changed(before, rendered))
        return rendered

    def delete_invoice(self, invoice_id: str, ctx: RequestContext) -> dict[str, Any]:
        record = self._invoice(invoice_id)
        if record["status"] != "draft":
            raise invalid("You can only delete draft invoices.", code="invoice_not_editable")
        rendered = self.render_invoice(record)
        for item in self.items_on(invoice_id):
            item["deleted"] = True
        return self._delete("invoice", record, rendered, ctx)

    def list_invoices(self, filters: dict[str, Any]) -> dict[str, Any]:
        records = _matching(self.invoices.values(), filters, ("customer", "status", "collection_method"))
        return self._page("/v1/invoices", "invoice", records, filters, self.render_invoice)

    def list_invoice_lines(self, invoice_id: str, filters: dict[str, Any]) -> dict[str, Any]:
        self._invoice(invoice_id)
        return self._page(
            f"/v1/invoices/{invoice_id}/lines",
            "line_item",
            self.items_on(invoice_id),
            filters,
            objects.line_item,
            cursor_of=lambda item: item["line_id"],
            newest_first=False,
        )

    def finalize_invoice(
        self, invoice_id: str, fields: dict[str, Any], ctx: RequestContext
    ) -> dict[str, Any]:
        record = self._invoice(invoice_id)
        if record["status"] != "draft":
            raise invalid(
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        if "auto_advance" in fields:
            record["auto_advance"] = fields["auto_advance"]
        self._finalize(record, ctx)
        return self.render_invoice(record)

    def _finalize(self, record: dict[str, Any], ctx: RequestContext) -> None:
        customer = self.customers[record["customer"]]
        if record["automatic_tax"]:
            # Stripe refuses to finalize what it cannot tax: no location, or a line whose tax behavior it would
            # take from account settings the double does not model.
            if tax.unlocated(customer["address"]):
                raise tax.location_error(customer["address"], "customer")
            if any(item["tax_behavior"] == "unspecified" for item in self.items_on(record["id"])):
                raise invalid(
                    "The Stripe test double needs tax_behavior on every item of an invoice with automatic tax "
                    "(the account's default tax behavior is not modelled).",
                    param="tax_behavior",
                    code="parameter_not_modelled",
                )
        now = self.now()
        record["status"] = "open"
        record["status_transitions"]["finalized_at"] = now
        record["number"] = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
        customer["next_invoice_sequence"] += 1
        record["customer_snapshot"] = objects.snapshot_of(customer)
        self.emit("invoice.finalized", self.render_invoice(record), ctx)
        if self.total(record) <= 0:
            # Nothing to collect: Stripe marks the invoice paid on finalization.
            self._mark_paid(record, ctx)

    def _remaining(self, record: dict[str, Any]) -> int:
        """``amount_remaining``: what is due (the total less credit notes issued before payment) less what was paid."""
        return max(max(self.total(record) - record["pre_payment_credit"], 0) - record["amount_paid"], 0)

    def _mark_paid(self, record: dict[str, Any], ctx: RequestContext, *, charged: bool = False) -> None:
        """Paid: ``charged`` by the customer's payment method (then refundable), or out of band; a credit note
        that brings what is due to zero marks an open invoice paid too (with nothing paid)."""
        paid = self._remaining(record)
        record["status"] = "paid"
        record["status_transitions"]["paid_at"] = self.now()
        record["amount_paid"] += paid
        if charged and paid:
            record["charged"] += paid
            record["charge"] = self.new_id("ch")
        self.emit("invoice.paid", self.render_invoice(record), ctx)

    def pay_invoice(self, invoice_id: str, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        record = self._invoice(invoice_id)
        if record["status"] in ("paid", "void"):
            raise invalid(f"Invoice is already {record['status']}.")
        method = self.customers[record["customer"]]["default_payment_method"]
        if not fields.get("paid_out_of_band") and method is None:
            # Collecting needs a payment method; without one it fails as it does on Stripe.
            raise invalid(
                "This customer has no attached payment source or default payment method. Please consider adding "
                "a default payment method. For more information, visit "
                "https://stripe.com/docs/billing/subscriptions/payment-methods-setting#payment-method-priority."
            )
        if record["status"] == "draft":
            self._finalize(record, ctx)
        if record["status"] == "paid":  # a $0 invoice is paid on finalization
            return self.render_invoice(record)
        if not fields.get("paid_out_of_band"):
            record["attempt_count"] = record.get("attempt_count", 0) + 1
            decline = TEST_PAYMENT_METHODS[method]
            if decline is not None:
                self.emit("invoice.payment_failed", self.render_invoice(record), ctx)
                raise card_declined(decline)
        self._mark_paid(record, ctx, charged=not fields.get("paid_out_of_band"))
        return self.render_invoice(record)

    def pay_on_hosted_page(self, invoice_id: str, ctx: RequestContext) -> dict[str, Any]:
        """The customer pays an open invoice by card on Stripe's hosted page: a charge, which can be refunded."""
        record = self._invoice(invoice_id)
        if record["status"] not in ("open", "uncollectible"):
            raise invalid(f"Invoice is {record['status']}: there is nothing to pay.")
        self._mark_paid(record, ctx, charged=True)
        return self.render_invoice(record)

    def void_invoice(self, invoice_id: str, ctx: RequestContext) -> dict[str, Any]:
        record = self._invoice(invoice_id)
        if record["status"] not in ("open", "uncollectible"):
            raise invalid(
                f"You can only void invoices that are open or uncollectible; this invoice is {record['status']}."
                + (" Delete a draft invoice instead." if record["status"] == "draft" else "")
            )
        record["status"] = "void"
        record["status_transitions"]["voided_at"] = self.now()
        rendered = self.render_invoice(record)
        self.emit("invoice.voided", rendered, ctx)
        return rendered

    def mark_uncollectible(self, invoice_id: str, ctx: RequestContext) -> dict[str, Any]:
        record = self._invoice(invoice_id)
        if record["status"] != "open":
            raise invalid(
                f"You can only mark open invoices as uncollectible; this invoice is {record['status']}."
            )
        record["status"] = "uncollectible"
        record["status_transitions"]["marked_uncollectible_at"] = self.now()
        rendered = self.render_invoice(record)
        self.emit("invoice.marked_uncollectible", rendered, ctx)
        return rendered

    # Credit notes and refunds

    def create_credit_note(self, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """Stripe's rules: a credit note first lowers what the invoice has left to pay (``pre_payment``); the rest
        (``post_payment``) must be exactly ``refund_amount`` + ``out_of_band_amount`` (``credit_amount`` is not
        modelled); notes never credit more than the invoice's total, nor an invoice line more than its amount;
        a refund needs what a payment method paid; an open invoice left with nothing to pay is paid."""
        invoice = self._invoice(fields["invoice"], param="invoice")
        if invoice["status"] not in ("open", "paid", "uncollectible"):
            raise invalid(
                f"You can only create a credit note on an open, paid or uncollectible invoice; invoice "
                f"{invoice['id']} is {invoice['status']}.",
                param="invoice",
            )
        lines = self._credit_note_lines(invoice, fields)
        total = fields["amount"] if "amount" in fields else sum(line["amount"] for line in lines)
        if total <= 0:
            raise invalid("The credit note's total must be greater than 0.", param="lines")
        creditable = self.total(invoice) - invoice["pre_payment_credit"] - invoice["post_payment_credit"]
        if total > creditable:
            raise invalid(
                f"The credit note's total ({total}) is more than the {creditable} that can still be credited on "
                f"invoice {invoice['id']}.",
                param="amount" if "amount" in fields else "lines",
            )
        pre = min(total, self._remaining(invoice))
        post = total - pre
        refund_amount, out_of_band = fields.get("refund_amount", 0), fields.get("out_of_band_amount", 0)
        if refund_amount + out_of_band != post:
            raise invalid(
                f"The sum of credit amount, refund amount and out of band amount ({refund_amount + out_of_band}) "
                f"must equal the credit note's post-payment amount ({post}).",
                param="refund_amount" if "refund_amount" in fields else "out_of_band_amount",
            )
        refundable = invoice["charged"] - invoice["refunded"]
        if refund_amount > refundable:
            raise invalid(
                f"refund_amount ({refund_amount}) is more than the {refundable} paid by a payment method and not "
                "refunded yet (an invoice paid out of band has nothing to refund).",
                param="refund_amount",
            )
        now = self.now()
        refund_id = None
        if refund_amount:
            refund_id = self.new_id("re")
            invoice["refunded"] += refund_amount
            self.refunds[refund_id] = {
                "id": refund_id,
                "amount": refund_amount,
                "charge": invoice["charge"],
                "created": now,
                "currency": invoice["currency"],
                "customer": invoice["customer"],
            }
            self.emit("refund.created", objects.refund(self.refunds[refund_id]), ctx)
        invoice["pre_payment_credit"] += pre
        invoice["post_payment_credit"] += post
        sequence = sum(1 for note in self.credit_notes.values() if note["invoice"] == invoice["id"]) + 1
        record = {
            "id": self.new_id("cn"),
            "created": now,
            "invoice": invoice["id"],
            "customer": invoice["customer"],
            "currency": invoice["currency"],
            "number": f"{invoice['number']}-CN-{sequence:02d}",
            "memo": fields.get("memo"),
            "reason": fields.get("reason"),
            "metadata": merge_metadata({}, fields.get("metadata") or {}),
            "lines": lines,
            "total": total,
            "pre_payment_amount": pre,
            "post_payment_amount": post,
            "refund_amount": refund_amount,
            "refund": refund_id,
            "out_of_band_amount": out_of_band,
            "deleted": False,
        }
        self.credit_notes[record["id"]] = record
        rendered = objects.credit_note(record)
        self.emit("credit_note.created", rendered, ctx)
        if pre and invoice["status"] in ("open", "uncollectible") and self._remaining(invoice) == 0:
            self._mark_paid(invoice, ctx)  # nothing left to pay: Stripe marks it paid
        return rendered

    def _credit_note_lines(self, invoice: dict[str, Any], fields: dict[str, Any]) -> list[dict[str, Any]]:
        """The lines as stored (their shape was checked by the endpoint): an ``invoice_line_item`` must be on the
        invoice and never be credited more than its amount, over all the invoice's credit notes."""
        items = {item["line_id"]: item for item in self.items_on(invoice["id"])}
        credited: dict[str, int] = {}
        for note in self.credit_notes.values():
            for line in note["lines"]:
                if line["invoice_line_item"]:
                    credited[line["invoice_line_item"]] = (
                        credited.get(line["invoice_line_item"], 0) + line["amount"]
                    )
        lines = []
        for index, line in enumerate(fields.get("lines") or []):
            name = f"lines[{index}]"
            quantity = line.get("quantity", 1)
            item = items.get(line.get("invoice_line_item", ""))
            if line["type"] == "custom_line_item":
                amount = line["unit_amount"] * quantity
            elif item is None:
                raise no_such(
                    "invoice line item",
                    line["invoice_line_item"],
                    param=f"{name}[invoice_line_item]",
                    status=400,
                )
            else:
                amount = (
                    line["amount"]
                    if "amount" in line
                    else _round_half_up(item["unit_amount_decimal"] * quantity)
                )
                left = item["amount"] - credited.get(item["line_id"], 0)
                if amount > left:
                    raise invalid(
                        f"{name} credits {amount}, more than the {left} left to credit on line item "
                        f"{item['line_id']}.",
                        param=f"{name}[amount]",
                    )
                credited[item["line_id"]] = credited.get(item["line_id"], 0) + amount
            lines.append(
                {
                    "id": self.new_id("cnli"),
                    "type": line["type"],
                    "invoice_line_item": item["line_id"]
                    if item and line["type"] == "invoice_line_item"
                    else None,
                    "description": line.get("description") or (item["description"] if item else None),
                    "unit_amount": line.get("unit_amount"),
                    "quantity": quantity,
                    "amount": amount,
                }
            )
        return lines

    def _credit_note(self, credit_note_id: str) -> dict[str, Any]:
        if credit_note_id not in self.credit_notes:
            raise no_such("credit_note", credit_note_id)
        return self.credit_notes[credit_note_id]

    def retrieve_credit_note(self, credit_note_id: str) -> dict[str, Any]:
        return objects.credit_note(self._credit_note(credit_note_id))

    def list_credit_notes(self, filters: dict[str, Any]) -> dict[str, Any]:
        if "invoice" in filters:
            self._invoice(filters["invoice"], param="invoice")
        records = _matching(self.credit_notes.values(), filters, ("customer", "invoice"))
        return self._page("/v1/credit_notes", "credit_note", records, filters, objects.credit_note)

    def list_credit_note_lines(self, credit_note_id: str, filters: dict[str, Any]) -> dict[str, Any]:
        return self._page(
            f"/v1/credit_notes/{credit_note_id}/lines",
            "credit_note_line_item",
            [{**line, "created": 0} for line in self._credit_note(credit_note_id)["lines"]],
            filters,
            objects.credit_note_line,
            newest_first=False,
        )

    def retrieve_refund(self, refund_id: str) -> dict[str, Any]:
        if refund_id not in self.refunds:
            raise no_such("refund", refund_id)
        return objects.refund(self.refunds[refund_id])

    # Stripe Tax

    def create_tax_calculation(self, fields: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """A Tax Calculation (docs.stripe.com/api/tax/calculations/create): each line item taxed at the rate of
        the customer's country, as automatic tax taxes an invoice's items (tests/stripe_double/tax.py)."""
        address = fields["customer_details"]["address"]
        if tax.unlocated(address):
            raise tax.location_error(address, "customer_details[address]")
        percent = self.tax_rates.get(address["country"].upper())
        lines = [
            tax.TaxedLine(line["amount"], line.get("tax_behavior", "exclusive"), line.get("tax_code"))
            for line in fields["line_items"]
        ]
        taxes = [tax.line_tax(line, percent) for line in lines]
        now = self.now()
        record = {
            "id": self.new_id("taxcalc"),
            "created": now,
            "currency": fields["currency"],
            "address": {**dict.fromkeys(_ADDRESS_KEYS), **address},
            "address_source": fields["customer_details"]["address_source"],
            "amount_total": sum(line.amount for line in lines)
            + sum(t for line, t in zip(lines, taxes, strict=True) if line.behavior == "exclusive"),
            "tax_amount_exclusive": sum(
                t for line, t in zip(lines, taxes, strict=True) if line.behavior == "exclusive"
            ),
            "tax_amount_inclusive": sum(
                t for line, t in zip(lines, taxes, strict=True) if line.behavior == "inclusive"
            ),
            "tax_breakdown": tax.breakdown(lines, taxes, address, percent),
            "line_items": [
                {**line, "amount_tax": t} for line, t in zip(fields["line_items"], taxes, strict=True)
            ],
        }
        self.tax_calculations[record["id"]] = record
        return objects.tax_calculation(record)

    # Events

    def retrieve_event(self, event_id: str) -> dict[str, Any]:
        if event_id not in self.events:
            raise no_such("event", event_id)
        return self.events[event_id]

    def list_events(self, filters: dict[str, Any]) -> dict[str, Any]:
        records = list(self.events.values())
        if "type" in filters:
            records = [e for e in records if fnmatch.fnmatchcase(e["type"], filters["type"])]
        if "types" in filters:
            records = [e for e in records if e["type"] in filters["types"]]
        return self._page("/v1/events", "event", records, filters, lambda e: e)

    # Lists and search

    def _delete(
        self, resource: str, record: dict[str, Any], rendered: dict[str, Any], ctx: RequestContext
    ) -> dict[str, Any]:
        """Mark ``record`` deleted and emit ``<resource>.deleted`` with how it looked before."""
        record["deleted"] = True
        self.emit(f"{resource}.deleted", rendered, ctx)
        return objects.deleted(resource, record["id"])

    def _page(
        self,
        url: str,
        resource: str,
        records: list[dict[str, Any]],
        filters: dict[str, Any],
        render: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        cursor_of: Callable[[dict[str, Any]], str] = lambda record: record["id"],
        newest_first: bool = True,
    ) -> dict[str, Any]:
        """One page of a Stripe list: newest first (an invoice's lines: in invoice order), ``limit`` (default 10),
        ``starting_after``/``ending_before`` cursors by object id."""
        if newest_first:
            records = list(reversed(records))
        records = [r for r in records if _created_matches(r["created"], filters.get("created"))]
        ids = [cursor_of(r) for r in records]
        limit = filters.get("limit", 10)
        if filters.get("starting_after"):
            cursor = filters["starting_after"]
            if cursor not in ids:
                raise no_such(resource, cursor, param="starting_after", status=400)
            start = ids.index(cursor) + 1
            chosen = records[start : start + limit]
            has_more = start + limit < len(records)
        elif filters.get("ending_before"):
            cursor = filters["ending_before"]
            if cursor not in ids:
                raise no_such(resource, cursor, param="ending_before", status=400)
            end = ids.index(cursor)
            chosen = records[max(end - limit, 0) : end]
            has_more = end - limit > 0
        else:
            chosen = records[:limit]
            has_more = len(records) > limit
        return objects.list_page(url, [render(r) for r in chosen], has_more)

    def search(self, resource: str, query: str, limit: int, page: str | None) -> dict[str, Any]:
        """Stripe's search query language, for the fields Stripe lets you search on customers and invoices."""
        if resource == "customer":
            url, candidates, render = "/v1/customers/search", self.customers.values(), objects.customer
            candidates = [c for c in candidates if not c["deleted"]]
        else:
            url, candidates, render = "/v1/invoices/search", self.invoices.values(), self.render_invoice
            candidates = [i for i in candidates if not i["deleted"]]
        clauses, combine = parse_search_query(query, SEARCH_FIELDS[resource], resource)
        visible_before = self.now() - self.search_delay_seconds
        matches = []
        for record in reversed(list(candidates)):
            if self.search_delay_seconds and record["created"] > visible_before:
                continue
            rendered = render(record)
            if combine(clause.matches(rendered) for clause in clauses):
                matches.append(rendered)
        offset = _page_offset(page)
        chosen = matches[offset : offset + limit]
        has_more = offset + limit < len(matches)
        return {
            "object": "search_result",
            "data": chosen,
            "has_more": has_more,
            "next_page": f"page_{offset + limit}" if has_more else None,
            "url": url,
        }


def _matching(
    records: Iterable[dict[str, Any]], filters: dict[str, Any], keys: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The records not deleted whose ``keys`` equal the list filters given for them."""
    return [r for r in records if not r["deleted"] and all(r[k] == filters[k] for k in keys if k in filters)]


def _page_offset(page: str | None) -> int:
    if page is None:
        return 0
    match = re.fullmatch(r"page_(\d+)", page)
    if not match:
        raise invalid(f"Invalid page: {page}", param="page")
    return int(match.group(1))


def _created_matches(created: int, condition: dict[str, int] | None) -> bool:
    if not condition:
        return True
    checks = {
        "eq": created.__eq__,
        "gt": created.__gt__,
        "gte": created.__ge__,
        "lt": created.__lt__,
        "lte": created.__le__,
    }
    return all(checks[op](value) for op, value in condition.items())


# Stripe's test PaymentMethods the double charges (docs.stripe.com/testing): None pays, a string is the
# decline code of the card error paying with it raises. The double takes them directly as a customer's
# ``invoice_settings.default_payment_method`` (on Stripe they are attached to the customer first).
TEST_PAYMENT_METHODS: dict[str, str | None] = {
    "pm_card_visa": None,
    "pm_card_mastercard": None,
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}


def _set_payment_method(record: dict[str, Any], fields: dict[str, Any]) -> None:
    settings = fields.get("invoice_settings")
    if not isinstance(settings, dict) or "default_payment_method" not in settings:
        return
    method = settings["default_payment_method"] or None
    if method is not None and method not in TEST_PAYMENT_METHODS:
        raise invalid(
            f"No such PaymentMethod: '{method}'",
            param="invoice_settings[default_payment_method]",
            code="resource_missing",
        )
    record["default_payment_method"] = method


def _require_draft(invoice: dict[str, Any], *, param: str) -> None:
    if invoice["status"] != "draft":
        raise invalid(
            f"The invoice {invoice['id']} is {invoice['status']} and can no longer be edited. Instead, consider "
            "creating additional invoice items that will be applied to the next invoice.",
            param=param,
            code="invoice_not_editable",
        )


def _address(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    if fields is None:
        return None
    return {key: fields.get(key) for key in ("city", "country", "line1", "line2", "postal_code", "state")}


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``data.previous_attributes`` of an ``*.updated`` event: the old values of the fields that changed."""
    return {key: value for key, value in before.items() if after.get(key) != value}


# Search

SEARCH_FIELDS = {
    "customer": {"created": int, "email": str, "metadata": str, "name": str, "phone": str},
    "invoice": {
        "created": int,
        "currency": str,
        "customer": str,
        "metadata": str,
        "number": str,
        "receipt_number": str,
        "status": str,
        "subscription": str,
        "total": int,
    },
}

_CLAUSE = re.compile(
    r"""\s*(?P<negate>-)?(?P<field>[a-z_]+)(?:\[(?P<kq>['"])(?P<key>.*?)(?P=kq)\])?"""
    r"""(?P<op>:|~|>=|<=|>|<)(?:(?P<vq>['"])(?P<quoted>.*?)(?P=vq)|(?P<bare>[^\s'"]+))\s*"""
)
_CONNECTOR = re.compile(r"(AND|OR)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class _Clause:
    field: str
    key: str | None
    op: str
    value: str | None
    kind: type
    negate: bool

    def matches(self, obj: dict[str, Any]) -> bool:
        actual = obj["metadata"].get(self.key) if self.field == "metadata" else obj.get(self.field)
        return self._test(actual) != self.negate

    def _test(self, actual: Any) -> bool:
        if self.value is None:
            return actual is None
        if actual is None:
            return False
        if self.kind is int:
            expected, actual = int(self.value), int(actual)
            return {
                ":": actual == expected,
                ">": actual > expected,
                ">=": actual >= expected,
                "<": actual < expected,
                "<=": actual <= expected,
            }[self.op]
        if self.op == "~":
            return self.value.lower() in str(actual).lower()
        return str(actual).lower() == self.value.lower()


def parse_search_query(
    query: str, fields: dict[str, type], resource: str
) -> tuple[list[_Clause], Callable[[Any], bool]]:
    """``metadata['tenant_id']:'123' AND status:'open'`` → clauses, and ``all`` or ``any`` to combine them."""
    clauses: list[_Clause] = []
    connectors: set[str] = set()
    position = 0
    while position < len(query):
        match = _CLAUSE.match(query, position)
        if not match:
            raise _bad_query(query, f"could not parse the query at position {position}")
        field = match.group("field")
        if field not in fields:
            raise _bad_query(
                query, f"Field `{field}` is an unsupported search field for resource `{resource}s`"
            )
        if (field == "metadata") != (match.group("key") is not None):
            raise _bad_query(query, "metadata must be searched as metadata['key']")
        op = match.group("op")
        value = match.group("quoted") if match.group("vq") else match.group("bare")
        if match.group("vq") is None and value == "null":
            value = None
        elif fields[field] is int and not (value and re.fullmatch(r"-?\d+", value)):
            raise _bad_query(query, f"`{field}` takes a number")
        elif fields[field] is str and op not in (":", "~"):
            raise _bad_query(query, f"`{field}` supports only the : and ~ operators")
        if op == "~" and (value is None or len(value) < 3):
            raise _bad_query(query, "the ~ operator needs at least 3 characters")
        clauses.append(
            _Clause(field, match.group("key"), op, value, fields[field], match.group("negate") is not None)
        )
        position = match.end()
        connector = _CONNECTOR.match(query, position)
        if connector:
            connectors.add(connector.group(1).upper())
            position = connector.end()
            if position >= len(query):
                raise _bad_query(query, "the query ends with a connector")
        elif position < len(query):
            connectors.add("AND")
    if not clauses:
        raise _bad_query(query, "the query is empty")
    if len(connectors) > 1:
        raise _bad_query(query, "AND and OR cannot be combined in one query")
    if len(clauses) > 10:
        raise _bad_query(query, "a query can have at most 10 clauses")
    return clauses, any if connectors == {"OR"} else all


def _bad_query(query: str, reason: str) -> StripeError:
    return invalid(f"Invalid search query {query!r}: {reason}.", param="query")
