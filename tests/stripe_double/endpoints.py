"""The routes the double serves: for each, the parameters it accepts, the checks Stripe makes on them before
doing anything, and the store operation it runs.

A route's ``spec`` lists only what the double models; ``stripe_params`` names the SDK's generated params type so
that a real-but-unmodelled parameter is refused with a message saying so (see ``params.validate``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import invalid, missing_parameter, only_one_of
from .params import (
    Field,
    array_of,
    boolean,
    created_filter,
    currency,
    decimal_string,
    enum,
    hash_of,
    integer,
    metadata,
    non_negative_integer,
    stripe_param_names,
    text,
)
from .resources import RequestContext, Store

Act = Callable[[Store, dict[str, str], dict[str, Any], RequestContext], dict[str, Any]]


def _limit(value: Any, name: str) -> int:
    number = integer(value, name)
    if not 1 <= number <= 100:
        raise invalid(f"Invalid {name}: must be between 1 and 100", param=name)
    return number


def _email(value: Any, name: str) -> str:
    return text(value, name, max_length=512)


def _no_check(params: dict[str, Any]) -> None:
    return None


EXPAND = Field(array_of(text))
METADATA = Field(metadata, nullable=True)
PAGING = {
    "limit": Field(_limit),
    "starting_after": Field(text),
    "ending_before": Field(text),
    "expand": EXPAND,
}
LISTING = {**PAGING, "created": Field(created_filter)}
ONLY_EXPAND = {"expand": EXPAND}
SEARCHING = {"query": Field(text), "limit": Field(_limit), "page": Field(text), "expand": EXPAND}

ADDRESS = Field(
    hash_of(
        {
            key: Field(text, nullable=True)
            for key in ("city", "country", "line1", "line2", "postal_code", "state")
        }
    ),
    nullable=True,
)
CUSTOMER_FIELDS = {
    "address": ADDRESS,
    "description": Field(text, nullable=True),
    "email": Field(_email, nullable=True),
    "expand": EXPAND,
    "metadata": METADATA,
    "name": Field(text, nullable=True),
    "phone": Field(text, nullable=True),
    "preferred_locales": Field(array_of(text), nullable=True),
    "tax_exempt": Field(enum("none", "exempt", "reverse"), nullable=True),
    "invoice_settings": Field(hash_of({"default_payment_method": Field(text, nullable=True)})),
}

INVOICE_ITEM_CREATE = {
    "amount": Field(integer),
    "currency": Field(currency),
    "customer": Field(text),
    "description": Field(text),
    "expand": EXPAND,
    "invoice": Field(text),
    "metadata": METADATA,
    "period": Field(hash_of({"start": Field(integer), "end": Field(integer)})),
    "quantity": Field(non_negative_integer),
    "quantity_decimal": Field(decimal_string),
    "tax_behavior": Field(enum("exclusive", "inclusive", "unspecified")),
    "tax_code": Field(text),
    "unit_amount_decimal": Field(decimal_string),
}


def _check_invoice_item(params: dict[str, Any]) -> None:
    if "customer" not in params:
        raise missing_parameter("customer")
    if "amount" in params and "unit_amount_decimal" in params:
        raise only_one_of("amount", "unit_amount_decimal")
    if "quantity" in params and "quantity_decimal" in params:
        raise only_one_of("quantity", "quantity_decimal")
    if "amount" in params and ("quantity" in params or "quantity_decimal" in params):
        raise only_one_of("amount", "quantity")
    if "amount" not in params and "unit_amount_decimal" not in params:
        raise missing_parameter("amount")
    for bound in ("start", "end"):
        if "period" in params and bound not in params["period"]:
            raise missing_parameter(f"period[{bound}]")


INVOICE_CREATE = {
    "auto_advance": Field(boolean),
    "collection_method": Field(enum("charge_automatically", "send_invoice")),
    "currency": Field(currency),
    "customer": Field(text),
    "days_until_due": Field(non_negative_integer),
    "description": Field(text, nullable=True),
    "due_date": Field(integer),
    "expand": EXPAND,
    "metadata": METADATA,
    "pending_invoice_items_behavior": Field(enum("exclude", "include")),
    "automatic_tax": Field(hash_of({"enabled": Field(boolean)})),
}


def _check_invoice(params: dict[str, Any]) -> None:
    if "customer" not in params:
        raise missing_parameter("customer")
    if "automatic_tax" in params and "enabled" not in params["automatic_tax"]:
        raise missing_parameter("automatic_tax[enabled]")
    method = params.get("collection_method", "charge_automatically")
    if method == "charge_automatically":
        for name in ("days_until_due", "due_date"):
            if name in params:
                raise invalid(
                    f"You can only specify '{name}' if invoice collection method is 'send_invoice'.",
                    param=name,
                )
    elif "days_until_due" in params and "due_date" in params:
        raise only_one_of("days_until_due", "due_date")
    elif "days_until_due" not in params and "due_date" not in params:
        raise invalid(
            "Invoices with collection_method 'send_invoice' need either 'days_until_due' or 'due_date'.",
            param="days_until_due",
            code="parameter_missing",
        )


CREDIT_NOTE_LINE = {
    "type": Field(enum("custom_line_item", "invoice_line_item")),
    "invoice_line_item": Field(text),
    "amount": Field(non_negative_integer),
    "quantity": Field(non_negative_integer),
    "unit_amount": Field(non_negative_integer),
    "description": Field(text),
}
CREDIT_NOTE_CREATE = {
    "invoice": Field(text),
    "amount": Field(non_negative_integer),
    "lines": Field(array_of(hash_of(CREDIT_NOTE_LINE))),
    "memo": Field(text),
    "reason": Field(enum("duplicate", "fraudulent", "order_change", "product_unsatisfactory")),
    "metadata": METADATA,
    "refund_amount": Field(non_negative_integer),
    "out_of_band_amount": Field(non_negative_integer),
    "expand": EXPAND,
}


def _check_credit_note(params: dict[str, Any]) -> None:
    """The shape Stripe requires: an invoice; ``amount`` or ``lines``; each line typed, an ``invoice_line_item``
    with its id and an amount or a quantity, a ``custom_line_item`` with a unit amount and a description."""
    if "invoice" not in params:
        raise missing_parameter("invoice")
    if "amount" in params and "lines" in params:
        raise only_one_of("amount", "lines")
    if "amount" not in params and not params.get("lines"):
        raise invalid("One of `amount`, `lines`, or `shipping_cost` must be provided.", param="lines")
    for index, line in enumerate(params.get("lines") or []):
        name = f"lines[{index}]"
        if "type" not in line:
            raise missing_parameter(f"{name}[type]")
        if line["type"] == "custom_line_item":
            refused, needed = ("invoice_line_item", "amount"), ("unit_amount", "description")
        else:
            refused, needed = ("unit_amount",), ("invoice_line_item",)
            if ("amount" in line) == ("quantity" in line):
                raise invalid(f"Pass one of {name}[amount] and {name}[quantity].", param=f"{name}[amount]")
        for key in refused:
            if key in line:
                raise invalid(f"{name}[{key}] cannot be set on a {line['type']}.", param=f"{name}[{key}]")
        for key in needed:
            if key not in line:
                raise missing_parameter(f"{name}[{key}]")


TAX_CALCULATION_LINE = {
    "amount": Field(integer),
    "quantity": Field(non_negative_integer),
    "reference": Field(text),
    "tax_behavior": Field(enum("exclusive", "inclusive")),
    "tax_code": Field(text),
}
TAX_CALCULATION_CREATE = {
    "currency": Field(currency),
    "customer_details": Field(
        hash_of({"address": ADDRESS, "address_source": Field(enum("billing", "shipping"))})
    ),
    "line_items": Field(array_of(hash_of(TAX_CALCULATION_LINE))),
    "expand": EXPAND,
}


def _check_tax_calculation(params: dict[str, Any]) -> None:
    """Stripe's shape: a currency; the customer's details with an address and where it comes from (``customer``,
    a Stripe customer instead, is not modelled); at least one line item, each a positive amount with a unique
    reference."""
    if "currency" not in params:
        raise missing_parameter("currency")
    details = params.get("customer_details")
    if details is None:
        raise missing_parameter("customer_details")
    for key in ("address", "address_source"):
        if details.get(key) is None:
            raise missing_parameter(f"customer_details[{key}]")
    if not params.get("line_items"):
        raise missing_parameter("line_items")
    references: set[str] = set()
    for index, line in enumerate(params["line_items"]):
        if "amount" not in line:
            raise missing_parameter(f"line_items[{index}][amount]")
        if line["amount"] < 0:
            raise invalid(
                "A line item's amount must be a positive integer.", param=f"line_items[{index}][amount]"
            )
        if "reference" in line and line["reference"] in references:
            raise invalid(
                "A line item's reference must be unique across the calculation's line items.",
                param=f"line_items[{index}][reference]",
            )
        references.add(line.get("reference", ""))


def _check_search(params: dict[str, Any]) -> None:
    if "query" not in params:
        raise missing_parameter("query")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    spec: dict[str, Field]
    act: Act
    stripe_params: str
    check: Callable[[dict[str, Any]], None] = _no_check
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(regex))

    @cached_property
    def stripe_knows(self) -> frozenset[str]:
        return stripe_param_names(self.stripe_params)


# Literal routes (``/search``) come before the ``{id}`` routes they would otherwise match.
# One endpoint a line: the double's routing table.
# fmt: off
ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/v1/customers/search", SEARCHING, lambda s, ids, p, ctx: s.search("customer", p["query"], p.get("limit", 10), p.get("page")), "CustomerSearchParams", _check_search),
    Endpoint("POST", "/v1/customers", CUSTOMER_FIELDS, lambda s, ids, p, ctx: s.create_customer(p, ctx), "CustomerCreateParams"),
    Endpoint("GET", "/v1/customers", {**LISTING, "email": Field(_email)}, lambda s, ids, p, ctx: s.list_customers(p), "CustomerListParams"),
    Endpoint("GET", "/v1/customers/{id}", ONLY_EXPAND, lambda s, ids, p, ctx: s.retrieve_customer(ids["id"]), "CustomerRetrieveParams"),
    Endpoint("POST", "/v1/customers/{id}", CUSTOMER_FIELDS, lambda s, ids, p, ctx: s.update_customer(ids["id"], p, ctx), "CustomerUpdateParams"),
    Endpoint("DELETE", "/v1/customers/{id}", {}, lambda s, ids, p, ctx: s.delete_customer(ids["id"], ctx), "CustomerDeleteParams"),
    Endpoint("POST", "/v1/invoiceitems", INVOICE_ITEM_CREATE, lambda s, ids, p, ctx: s.create_invoice_item(p, ctx), "InvoiceItemCreateParams", _check_invoice_item),
    Endpoint("GET", "/v1/invoiceitems", {**LISTING, "customer": Field(text), "invoice": Field(text), "pending": Field(boolean)}, lambda s, ids, p, ctx: s.list_invoice_items(p), "InvoiceItemListParams"),
    Endpoint("GET", "/v1/invoiceitems/{id}", ONLY_EXPAND, lambda s, ids, p, ctx: s.retrieve_invoice_item(ids["id"]), "InvoiceItemRetrieveParams"),
    Endpoint("POST", "/v1/invoiceitems/{id}", {"description": Field(text), "metadata": METADATA, "expand": EXPAND}, lambda s, ids, p, ctx: s.update_invoice_item(ids["id"], p, ctx), "InvoiceItemUpdateParams"),
    Endpoint("DELETE", "/v1/invoiceitems/{id}", {}, lambda s, ids, p, ctx: s.delete_invoice_item(ids["id"], ctx), "InvoiceItemDeleteParams"),
    Endpoint("GET", "/v1/invoices/search", SEARCHING, lambda s, ids, p, ctx: s.search("invoice", p["query"], p.get("limit", 10), p.get("page")), "InvoiceSearchParams", _check_search),
    Endpoint("POST", "/v1/invoices", INVOICE_CREATE, lambda s, ids, p, ctx: s.create_invoice(p, ctx), "InvoiceCreateParams", _check_invoice),
    Endpoint("GET", "/v1/invoices", {**LISTING, "customer": Field(text), "status": Field(enum("draft", "open", "paid", "uncollectible", "void")), "collection_method": Field(enum("charge_automatically", "send_invoice")),}, lambda s, ids, p, ctx: s.list_invoices(p), "InvoiceListParams"),
    Endpoint("GET", "/v1/invoices/{id}", ONLY_EXPAND, lambda s, ids, p, ctx: s.retrieve_invoice(ids["id"]), "InvoiceRetrieveParams"),
    Endpoint("POST", "/v1/invoices/{id}", {"auto_advance": Field(boolean), "description": Field(text, nullable=True), "metadata": METADATA, "expand": EXPAND,}, lambda s, ids, p, ctx: s.update_invoice(ids["id"], p, ctx), "InvoiceUpdateParams"),
    Endpoint("DELETE", "/v1/invoices/{id}", {}, lambda s, ids, p, ctx: s.delete_invoice(ids["id"], ctx), "InvoiceDeleteParams"),
    Endpoint("GET", "/v1/invoices/{id}/lines", PAGING, lambda s, ids, p, ctx: s.list_invoice_lines(ids["id"], p), "InvoiceListLinesParams"),
    Endpoint("POST", "/v1/invoices/{id}/finalize", {"auto_advance": Field(boolean), "expand": EXPAND}, lambda s, ids, p, ctx: s.finalize_invoice(ids["id"], p, ctx), "InvoiceFinalizeInvoiceParams"),
    Endpoint("POST", "/v1/invoices/{id}/pay", {"paid_out_of_band": Field(boolean), "expand": EXPAND}, lambda s, ids, p, ctx: s.pay_invoice(ids["id"], p, ctx), "InvoicePayParams"),
    Endpoint("POST", "/v1/invoices/{id}/void", ONLY_EXPAND, lambda s, ids, p, ctx: s.void_invoice(ids["id"], ctx), "InvoiceVoidInvoiceParams"),
    Endpoint("POST", "/v1/invoices/{id}/mark_uncollectible", ONLY_EXPAND, lambda s, ids, p, ctx: s.mark_uncollectible(ids["id"], ctx), "InvoiceMarkUncollectibleParams"),
    Endpoint("POST", "/v1/credit_notes", CREDIT_NOTE_CREATE, lambda s, ids, p, ctx: s.create_credit_note(p, ctx), "CreditNoteCreateParams", _check_credit_note),
    Endpoint("GET", "/v1/credit_notes", {**LISTING, "invoice": Field(text), "customer": Field(text)}, lambda s, ids, p, ctx: s.list_credit_notes(p), "CreditNoteListParams"),
    Endpoint("GET", "/v1/credit_notes/{id}", ONLY_EXPAND, lambda s, ids, p, ctx: s.retrieve_credit_note(ids["id"]), "CreditNoteRetrieveParams"),
    Endpoint("GET", "/v1/credit_notes/{id}/lines", PAGING, lambda s, ids, p, ctx: s.list_credit_note_lines(ids["id"], p), "CreditNoteListLinesParams"),
    Endpoint("GET", "/v1/refunds/{id}", ONLY_EXPAND, lambda s, ids, p, ctx: s.retrieve_refund(ids["id"]), "RefundRetrieveParams"),
    Endpoint("POST", "/v1/tax/calculations", TAX_CALCULATION_CREATE, lambda s, ids, p, ctx: s.create_tax_calculation(p, ctx), "tax.CalculationCreateParams", _check_tax_calculation),
    Endpoint("GET", "/v1/events", {**LISTING, "type": Field(text), "types": Field(array_of(text))}, lambda s, ids, p, ctx: s.list_events(p), "EventListParams"),
    Endpoint("GET", "/v1/events/{id}", ONLY_EXPAND, lambda s, ids, p, ctx: s.retrieve_event(ids["id"]), "EventRetrieveParams"),
]
# fmt: on


def route(method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
    for endpoint in ENDPOINTS:
        if endpoint.method == method:
            match = endpoint.pattern.fullmatch(path)
            if match:
                return endpoint, match.groupdict()
    return None


# ``expand[]``: which fields of which objects hold an id that can be replaced by the object.
EXPANDABLE = {"invoice": {"customer"}, "invoiceitem": {"customer", "invoice"}, "line_item": {"invoice"}}


def expand(store: Store, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    for path in paths:
        _expand_path(store, obj, path.split("."), path)
    return obj


def _expand_path(store: Store, obj: dict[str, Any], parts: list[str], path: str) -> None:
    head, rest = parts[0], parts[1:]
    if obj.get("object") in ("list", "search_result") and head == "data" and rest:
        for element in obj["data"]:
            _expand_path(store, element, rest, path)
        return
    value = obj.get(head)
    if rest:
        if not isinstance(value, dict):
            raise invalid(f"This property cannot be expanded ({path}).", param="expand")
        _expand_path(store, value, rest, path)
        return
    if head not in EXPANDABLE.get(obj.get("object", ""), set()):
        raise invalid(f"This property cannot be expanded ({path}).", param="expand")
    if isinstance(value, str):
        obj[head] = store.retrieve_customer(value) if head == "customer" else store.retrieve_invoice(value)
