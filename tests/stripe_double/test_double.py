"""The Stripe double behaves like Stripe for the invoice-sync flow, as seen through the real ``stripe`` SDK over HTTP."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import stripe

from .objects import FIXTURES_PATH, example
from .params import decode_form
from .server import StripeDouble
from .webhooks import build_webhook, signature_header

WEBHOOK_SECRET = "whsec_test_double"


@pytest.fixture
def client(stripe_double: StripeDouble) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_x", base_addresses={"api": stripe_double.url})


def _customer(client: stripe.StripeClient, tenant_id: str = "123") -> stripe.Customer:
    return client.v1.customers.create(
        params={"name": "Acme Voice", "email": "billing@acme.test", "metadata": {"tenant_id": tenant_id}}
    )


def _draft_with_items(client: stripe.StripeClient, customer_id: str, *amounts: int) -> stripe.Invoice:
    invoice = client.v1.invoices.create(
        params={
            "customer": customer_id,
            "currency": "usd",
            "auto_advance": False,
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "metadata": {"invoice_id": "42"},
        }
    )
    for amount in amounts:
        client.v1.invoice_items.create(
            params={"customer": customer_id, "invoice": invoice.id, "amount": amount, "currency": "usd"}
        )
    return invoice


def _raw(double: StripeDouble, method: str, path: str, data: dict | None = None, **headers: str):
    """A request without the SDK, for what the SDK would never send."""
    headers = {"Authorization": "Bearer sk_test_x", **headers}
    return requests.request(method, double.url + path, data=data, headers=headers, timeout=5)


# Customers


def test_customer_is_created_retrieved_and_found_by_metadata_search(client):
    created = _customer(client)

    assert created.id.startswith("cus_")
    assert created.livemode is False
    retrieved = client.v1.customers.retrieve(created.id)
    assert (retrieved.email, retrieved.metadata["tenant_id"]) == ("billing@acme.test", "123")
    _customer(client, tenant_id="999")
    found = client.v1.customers.search(params={"query": "metadata['tenant_id']:'123'"})
    assert found.object == "search_result"
    assert [c.id for c in found.data] == [created.id]


def test_module_level_api_base_reaches_the_double(stripe_double, monkeypatch):
    monkeypatch.setattr(stripe, "api_base", stripe_double.url)

    customer = stripe.Customer.create(api_key="sk_test_x", email="a@example.test")

    assert stripe.Customer.retrieve(customer.id, api_key="sk_test_x").email == "a@example.test"


def test_customer_update_merges_metadata_and_empty_string_unsets_a_key(client):
    customer = client.v1.customers.create(params={"metadata": {"tenant_id": "1", "plan": "pro"}})

    updated = client.v1.customers.update(customer.id, params={"metadata": {"plan": "", "region": "eu"}})

    assert updated.metadata.to_dict() == {"tenant_id": "1", "region": "eu"}


def test_customer_list_pages_newest_first(client):
    ids = [client.v1.customers.create(params={"name": f"c{i}"}).id for i in range(25)]

    page = client.v1.customers.list(params={"limit": 10})

    assert [c.id for c in page.data] == ids[::-1][:10]
    assert page.has_more is True
    assert [c.id for c in page.auto_paging_iter()] == ids[::-1]


def test_deleted_customer_is_a_stub_and_cannot_be_invoiced(client):
    customer = _customer(client)
    client.v1.customers.delete(customer.id)

    assert client.v1.customers.retrieve(customer.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(params={"customer": customer.id})
    assert (refused.value.http_status, refused.value.code, refused.value.param) == (
        400,
        "resource_missing",
        "customer",
    )


# Response shapes


def test_responses_have_exactly_the_fields_of_stripes_example_objects(stripe_double, client):
    customer = _customer(client)
    invoice = _draft_with_items(client, customer.id, 500)
    item = client.v1.invoice_items.list(params={"invoice": invoice.id}).data[0]
    event = client.v1.events.list(params={"limit": 1}).data[0]

    for obj, resource in [
        (customer, "customer"),
        (invoice, "invoice"),
        (item, "invoiceitem"),
        (event, "event"),
    ]:
        assert set(obj.to_dict()) == set(example(resource)), resource
    line = client.v1.invoices.retrieve(invoice.id).lines.data[0]
    assert set(line.to_dict()) == set(example("line_item"))
    assert line.parent.invoice_item_details.invoice_item == item.id


# fixtures3.json is Stripe's own example-object file, openapi/fixtures3.json from github.com/stripe/openapi,
# copied unedited from the team's shared/data/stripe/ (checked equal when pinned). To refresh it, copy the new
# upstream file over it and pin its `sha256sum`; never edit it by hand (the double's answers come from it).
FIXTURES_SHA256 = "41486e14a5b930447f53ecc4e71e34e3184462ba3d18212a39d4a40f70eaba44"


def test_bundled_fixtures_are_stripes_file_unedited():
    assert hashlib.sha256(FIXTURES_PATH.read_bytes()).hexdigest() == FIXTURES_SHA256


# Invoices


def test_invoice_with_items_finalizes_and_is_paid_with_totals_from_its_items(client):
    customer = _customer(client)
    draft = _draft_with_items(client, customer.id, 1234, 766)

    assert (draft.status, draft.number) == ("draft", None)
    finalized = client.v1.invoices.finalize_invoice(draft.id)
    assert finalized.status == "open"
    assert (finalized.subtotal, finalized.total, finalized.amount_due, finalized.amount_remaining) == (
        2000,
        2000,
        2000,
        2000,
    )
    assert [line.amount for line in finalized.lines.data] == [1234, 766]
    assert finalized.number is not None
    assert finalized.status_transitions.finalized_at is not None
    assert finalized.customer_email == "billing@acme.test"
    assert finalized.due_date == finalized.created + 30 * 86400

    paid = client.v1.invoices.pay(draft.id, params={"paid_out_of_band": True})
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 2000, 0)
    assert paid.status_transitions.paid_at is not None


def test_pay_charges_the_default_payment_method_and_a_declining_card_raises_card_error(stripe_double, client):
    customer = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": "pm_nope"}})
    assert unknown.value.param == "invoice_settings[default_payment_method]"
    assert client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method is None

    client.v1.customers.update(
        customer.id, {"invoice_settings": {"default_payment_method": "pm_card_chargeDeclined"}}
    )
    invoice = _draft_with_items(client, customer.id, 700)
    with pytest.raises(stripe.CardError) as declined:
        client.v1.invoices.pay(invoice.id)
    assert declined.value.http_status == 402
    assert (declined.value.code, declined.value.json_body["error"]["decline_code"]) == (
        "card_declined",
        "generic_decline",
    )
    after = client.v1.invoices.retrieve(invoice.id)
    assert (after.status, after.attempt_count, after.attempted, after.amount_paid) == ("open", 1, True, 0)
    assert [e["data"]["object"]["id"] for e in stripe_double.events("invoice.payment_failed")] == [invoice.id]

    updated = client.v1.customers.update(
        customer.id, {"invoice_settings": {"default_payment_method": "pm_card_visa"}}
    )
    assert updated.invoice_settings.default_payment_method == "pm_card_visa"
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid, paid.attempt_count) == ("paid", 700, 2)


def test_invoice_search_by_metadata_and_status(client):
    customer = _customer(client)
    wanted = _draft_with_items(client, customer.id, 100)
    client.v1.invoices.create(params={"customer": customer.id, "metadata": {"invoice_id": "7"}})

    found = client.v1.invoices.search(params={"query": "metadata['invoice_id']:'42' AND status:'draft'"})

    assert [i.id for i in found.data] == [wanted.id]
    assert (
        client.v1.invoices.search(params={"query": "metadata['invoice_id']:'42' AND status:'open'"}).data
        == []
    )


def test_search_on_an_unsupported_field_is_refused(client):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.search(params={"query": "amount_due:100"})
    assert refused.value.param == "query"


def test_search_can_lag_behind_writes_like_stripes_index(stripe_double, client):
    stripe_double.search_delay_seconds = 60
    customer = _customer(client)
    query = {"query": "metadata['tenant_id']:'123'"}

    assert client.v1.customers.search(params=query).data == []
    stripe_double.advance_time(61)
    assert [c.id for c in client.v1.customers.search(params=query).data] == [customer.id]


def test_invoices_and_items_list_filtered(client):
    first, second = _customer(client, "1"), _customer(client, "2")
    invoice = _draft_with_items(client, first.id, 100, 200)
    _draft_with_items(client, second.id, 300)

    assert [i.id for i in client.v1.invoices.list(params={"customer": first.id}).data] == [invoice.id]
    assert len(client.v1.invoices.list(params={"status": "draft"}).data) == 2
    assert [i.amount for i in client.v1.invoice_items.list(params={"invoice": invoice.id}).data] == [200, 100]


def test_expand_customer_on_invoice(client):
    customer = _customer(client)
    invoice = _draft_with_items(client, customer.id, 100)

    expanded = client.v1.invoices.retrieve(invoice.id, params={"expand": ["customer"]})

    assert expanded.customer.email == "billing@acme.test"


def test_decimal_unit_amount_is_rounded_half_up_once_per_line(client):
    customer = _customer(client)
    invoice = _draft_with_items(client, customer.id)

    item = client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "unit_amount_decimal": "0.05", "quantity": 30}
    )

    assert item.amount == 2  # Stripe's own example: 0.05 × 30 = 1.5 → 2
    assert client.v1.invoices.retrieve(invoice.id).total == 2


def test_zero_total_invoice_is_paid_on_finalization(client):
    customer = _customer(client)
    invoice = client.v1.invoices.create(params={"customer": customer.id})

    finalized = client.v1.invoices.finalize_invoice(invoice.id)

    assert (finalized.status, finalized.amount_paid) == ("paid", 0)


def test_items_can_only_be_added_to_draft_invoices(client):
    customer = _customer(client)
    invoice = _draft_with_items(client, customer.id, 100)
    client.v1.invoices.finalize_invoice(invoice.id)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoice_items.create(params={"customer": customer.id, "invoice": invoice.id, "amount": 5})

    assert (refused.value.http_status, refused.value.code) == (400, "invoice_not_editable")
    assert client.v1.invoices.retrieve(invoice.id).total == 100


def test_item_currency_must_match_the_invoice(client):
    customer = _customer(client)
    invoice = _draft_with_items(client, customer.id)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoice_items.create(
            params={"customer": customer.id, "invoice": invoice.id, "amount": 5, "currency": "eur"}
        )
    assert refused.value.param == "currency"


def test_pending_items_join_a_new_invoice_only_when_asked(client):
    customer = _customer(client)
    client.v1.invoice_items.create(params={"customer": customer.id, "amount": 700, "currency": "usd"})

    excluded = client.v1.invoices.create(params={"customer": customer.id})
    included = client.v1.invoices.create(
        params={"customer": customer.id, "pending_invoice_items_behavior": "include"}
    )

    assert (excluded.total, included.total) == (0, 700)


ILLEGAL = [
    ([], "void"),
    ([], "mark_uncollectible"),
    (["finalize"], "finalize"),
    (["finalize", "pay"], "void"),
    (["finalize", "pay"], "pay"),
    (["finalize", "pay"], "mark_uncollectible"),
    (["finalize", "void"], "pay"),
    (["finalize", "void"], "void"),
    (["finalize", "mark_uncollectible"], "mark_uncollectible"),
]


def _act(client: stripe.StripeClient, invoice_id: str, action: str) -> stripe.Invoice:
    if action == "finalize":
        return client.v1.invoices.finalize_invoice(invoice_id)
    if action == "pay":
        return client.v1.invoices.pay(invoice_id, params={"paid_out_of_band": True})
    if action == "void":
        return client.v1.invoices.void_invoice(invoice_id)
    return client.v1.invoices.mark_uncollectible(invoice_id)


@pytest.mark.parametrize(
    ("before", "action"), ILLEGAL, ids=lambda v: "-".join(v) if isinstance(v, list) else v
)
def test_illegal_status_transitions_are_refused_with_stripes_error_shape(client, before, action):
    invoice = _draft_with_items(client, _customer(client).id, 100)
    for step in before:
        _act(client, invoice.id, step)
    status_before = client.v1.invoices.retrieve(invoice.id).status

    with pytest.raises(stripe.InvalidRequestError) as refused:
        _act(client, invoice.id, action)

    error = refused.value.json_body["error"]
    assert refused.value.http_status == 400
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert client.v1.invoices.retrieve(invoice.id).status == status_before


@pytest.mark.parametrize(
    ("steps", "status"),
    [
        (["finalize", "mark_uncollectible", "pay"], "paid"),
        (["finalize", "mark_uncollectible", "void"], "void"),
    ],
)
def test_uncollectible_invoices_can_still_be_paid_or_voided(client, steps, status):
    invoice = _draft_with_items(client, _customer(client).id, 100)

    for step in steps:
        result = _act(client, invoice.id, step)

    assert result.status == status


def test_paying_a_draft_finalizes_it_first(client):
    invoice = _draft_with_items(client, _customer(client).id, 100)

    paid = client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})

    assert paid.status == "paid"
    assert paid.number is not None


def test_collecting_payment_fails_without_a_payment_method(client):
    invoice = _draft_with_items(client, _customer(client).id, 100)
    client.v1.invoices.finalize_invoice(invoice.id)

    with pytest.raises(stripe.InvalidRequestError, match="no attached payment source"):
        client.v1.invoices.pay(invoice.id)
    assert client.v1.invoices.retrieve(invoice.id).status == "open"


def test_only_drafts_can_be_deleted(client):
    customer = _customer(client)
    draft = _draft_with_items(client, customer.id, 100)
    open_invoice = _draft_with_items(client, customer.id, 100)
    client.v1.invoices.finalize_invoice(open_invoice.id)

    assert client.v1.invoices.delete(draft.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.delete(open_invoice.id)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.retrieve(draft.id)
    assert missing.value.http_status == 404


# Parameters Stripe refuses


def test_days_until_due_is_refused_for_charge_automatically(client):
    customer = _customer(client)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(
            params={
                "customer": customer.id,
                "collection_method": "charge_automatically",
                "days_until_due": 30,
            }
        )

    assert refused.value.param == "days_until_due"
    assert client.v1.invoices.list().data == []


def test_send_invoice_needs_days_until_due_or_due_date(client):
    customer = _customer(client)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(params={"customer": customer.id, "collection_method": "send_invoice"})

    assert refused.value.param == "days_until_due"


def test_unknown_parameters_are_refused_with_the_param_named(client):
    customer = _customer(client)

    with pytest.raises(stripe.InvalidRequestError) as top_level:
        client.v1.invoices.create(params={"customer": customer.id, "colour": "red"})
    with pytest.raises(stripe.InvalidRequestError) as nested:
        client.v1.customers.create(params={"address": {"city": "Paris", "planet": "Earth"}})

    assert (top_level.value.code, top_level.value.param) == ("parameter_unknown", "colour")
    assert str(top_level.value.user_message) == "Received unknown parameter: colour"
    assert (nested.value.code, nested.value.param) == ("parameter_unknown", "address[planet]")


def test_real_parameters_the_double_does_not_model_are_refused_not_ignored(client):
    customer = _customer(client)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(params={"customer": customer.id, "footer": "Thanks"})

    assert (refused.value.code, refused.value.param) == ("parameter_not_modelled", "footer")


def test_missing_required_parameter(client):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(params={"currency": "usd"})

    assert (refused.value.code, refused.value.param) == ("parameter_missing", "customer")


def test_amount_cannot_be_combined_with_quantity(client):
    customer = _customer(client)

    with pytest.raises(
        stripe.InvalidRequestError, match="only specify one of these parameters: amount, quantity"
    ):
        client.v1.invoice_items.create(
            params={"customer": customer.id, "amount": 100, "quantity": 2, "currency": "usd"}
        )


def test_typed_parameters_are_checked(client):
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create(params={"customer": "cus_x", "auto_advance": "maybe"})

    assert refused.value.param == "auto_advance"


def test_unknown_ids(client):
    with pytest.raises(stripe.InvalidRequestError) as in_url:
        client.v1.invoices.retrieve("in_missing")
    with pytest.raises(stripe.InvalidRequestError) as in_param:
        client.v1.invoice_items.create(params={"customer": "cus_missing", "amount": 1, "currency": "usd"})

    assert (in_url.value.http_status, in_url.value.code, in_url.value.param) == (
        404,
        "resource_missing",
        "id",
    )
    assert in_url.value.user_message == "No such invoice: 'in_missing'"
    assert (in_param.value.http_status, in_param.value.param) == (400, "customer")


@pytest.mark.parametrize("key", [None, "sk_live_abcdefgh1234", "pk_test_abcdefgh1234"])
def test_requests_without_a_test_secret_key_are_unauthorized(stripe_double, key):
    client = stripe.StripeClient(key or "", base_addresses={"api": stripe_double.url})

    with pytest.raises(stripe.AuthenticationError) as refused:
        client.v1.customers.list()

    assert refused.value.http_status == 401


def test_unknown_routes_answer_404(stripe_double):
    response = _raw(stripe_double, "GET", "/v1/subscriptions")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_form_bracket_syntax_is_decoded():
    pairs = [
        ("metadata[tenant_id]", "1"),
        ("expand[]", "customer"),
        ("expand[]", "lines"),
        ("period[start]", "5"),
    ]

    assert decode_form(pairs) == {
        "metadata": {"tenant_id": "1"},
        "expand": ["customer", "lines"],
        "period": {"start": "5"},
    }


def test_curl_style_array_syntax_reaches_the_same_endpoint(stripe_double, client):
    customer = _customer(client)
    invoice = _draft_with_items(client, customer.id, 100)

    response = _raw(stripe_double, "GET", f"/v1/invoices/{invoice.id}?expand[]=customer")

    assert response.json()["customer"]["id"] == customer.id


# Idempotency


def test_a_repeated_idempotency_key_replays_the_first_answer(stripe_double, client):
    options = {"idempotency_key": "meterline-invoice-42-create"}
    customer = _customer(client)
    params = {"customer": customer.id, "metadata": {"invoice_id": "42"}}

    first = client.v1.invoices.create(params=params, options=options)
    second = client.v1.invoices.create(params=params, options=options)

    assert second.id == first.id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert second.last_response.body == first.last_response.body
    assert len(stripe_double.invoices) == 1
    assert [r.replayed for r in stripe_double.requests_to("POST", "/v1/invoices")] == [False, True]


def test_errors_are_replayed_too_once_the_request_ran(stripe_double, client):
    options = {"idempotency_key": "finalize-missing"}

    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.invoices.finalize_invoice("in_missing", options=options)

    assert [r.replayed for r in stripe_double.requests] == [False, True]


def test_a_request_refused_for_its_parameters_is_not_saved_under_its_key(client):
    options = {"idempotency_key": "k"}
    customer = _customer(client)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create(params={"customer": customer.id, "colour": "red"}, options=options)

    invoice = client.v1.invoices.create(params={"customer": customer.id}, options=options)

    assert invoice.status == "draft"


def test_the_same_key_with_other_parameters_is_an_idempotency_error(stripe_double, client):
    customer = _customer(client)
    options = {"idempotency_key": "meterline-invoice-42-create"}
    client.v1.invoices.create(
        params={"customer": customer.id, "metadata": {"invoice_id": "42"}}, options=options
    )

    with pytest.raises(stripe.IdempotencyError) as refused:
        client.v1.invoices.create(
            params={"customer": customer.id, "metadata": {"invoice_id": "43"}}, options=options
        )
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={}, options=options)

    assert refused.value.http_status == 400
    assert refused.value.json_body["error"]["type"] == "idempotency_error"
    assert len(stripe_double.invoices) == 1


def test_concurrent_requests_with_one_key_create_one_object(stripe_double, client):
    customer = _customer(client)
    options = {"idempotency_key": "meterline-invoice-42-create"}

    def create(_: int) -> str:
        own_client = stripe_double.client("sk_test_x")
        return own_client.v1.invoices.create(params={"customer": customer.id}, options=options).id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(create, range(8)))

    assert len(ids) == 1
    assert len(stripe_double.invoices) == 1


def test_idempotency_keys_are_scoped_to_the_api_key(stripe_double):
    options = {"idempotency_key": "shared"}
    first = stripe_double.client("sk_test_one").v1.customers.create(params={"name": "a"}, options=options)
    second = stripe_double.client("sk_test_two").v1.customers.create(params={"name": "a"}, options=options)

    assert first.id != second.id


def test_idempotency_keys_expire_after_24_hours(stripe_double, client):
    options = {"idempotency_key": "old"}
    first = client.v1.customers.create(params={"name": "a"}, options=options)

    stripe_double.advance_time(24 * 3600)
    again = client.v1.customers.create(params={"name": "a"}, options=options)

    assert again.id != first.id


def test_the_sdk_sends_an_idempotency_key_and_the_api_version_on_every_post(stripe_double, client):
    _customer(client)

    (request,) = stripe_double.requests
    assert request.idempotency_key
    assert request.headers["Stripe-Version"] == stripe.api_version


# Faults


@pytest.mark.usefixtures("fast_stripe_retries")
def test_a_500_is_retried_by_the_sdk_under_the_same_key_and_creates_one_invoice(stripe_double):
    client = stripe_double.client("sk_test_x", max_network_retries=2)
    customer = _customer(client)
    fault = stripe_double.inject(r"/v1/invoices", "POST", "500")

    invoice = client.v1.invoices.create(params={"customer": customer.id})

    attempts = stripe_double.requests_to("POST", "/v1/invoices")
    assert [a.status for a in attempts] == [500, 200]
    assert len({a.idempotency_key for a in attempts}) == 1
    assert attempts[0].params == attempts[1].params == {"customer": customer.id}
    assert [i["id"] for i in stripe_double.invoices] == [invoice.id]
    assert (fault.fired, fault.remaining) == (1, 0)


@pytest.mark.usefixtures("fast_stripe_retries")
def test_stripe_client_does_not_retry_by_default_but_the_module_level_api_retries_twice(
    stripe_double, client, monkeypatch
):
    customer = _customer(client)
    monkeypatch.setattr(stripe, "api_base", stripe_double.url)
    stripe_double.inject(r"/v1/invoices", kind="500", times=4)

    with pytest.raises(stripe.APIError):
        client.v1.invoices.create(params={"customer": customer.id})
    assert len(stripe_double.requests_to("POST", "/v1/invoices")) == 1
    with pytest.raises(stripe.APIError):
        stripe.Invoice.create(api_key="sk_test_x", customer=customer.id)
    assert len(stripe_double.requests_to("POST", "/v1/invoices")) == 1 + 3


def test_a_500_without_retries_is_an_api_error_and_nothing_is_created(stripe_double, client):
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="500")

    with pytest.raises(stripe.APIError) as failed:
        client.v1.invoices.create(params={"customer": customer.id})

    assert failed.value.http_status == 500
    assert failed.value.json_body["error"]["type"] == "api_error"
    assert stripe_double.invoices == []


@pytest.mark.usefixtures("fast_stripe_retries")
def test_a_429_is_a_rate_limit_error_the_sdk_does_not_retry(stripe_double):
    client = stripe_double.client(max_network_retries=2)
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="429", headers={"Retry-After": "2"})

    with pytest.raises(stripe.RateLimitError) as limited:
        client.v1.invoices.create(params={"customer": customer.id})

    assert limited.value.http_status == 429
    assert limited.value.json_body["error"]["code"] == "rate_limit"
    assert limited.value.headers["Retry-After"] == "2"
    assert len(stripe_double.requests_to("POST", "/v1/invoices")) == 1


@pytest.mark.usefixtures("fast_stripe_retries")
def test_a_429_marked_retryable_is_retried_by_the_sdk(stripe_double):
    client = stripe_double.client(max_network_retries=1)
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="429", headers={"Stripe-Should-Retry": "true"})

    client.v1.invoices.create(params={"customer": customer.id})

    assert [r.status for r in stripe_double.requests_to("POST", "/v1/invoices")] == [429, 200]


@pytest.mark.usefixtures("fast_stripe_retries")
def test_a_timeout_before_processing_is_retried_and_creates_one_invoice(stripe_double):
    client = stripe_double.client(max_network_retries=1, http_client=stripe.RequestsClient(timeout=0.3))
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="timeout", delay=1.0)

    started = time.monotonic()
    invoice = client.v1.invoices.create(params={"customer": customer.id})

    assert time.monotonic() - started < 1.0
    attempts = stripe_double.requests_to("POST", "/v1/invoices")
    assert [(a.fault, a.replayed) for a in attempts] == [("timeout", False), (None, False)]
    assert [i["id"] for i in stripe_double.invoices] == [invoice.id]


@pytest.mark.usefixtures("fast_stripe_retries")
def test_a_timeout_after_processing_is_answered_by_replay_on_retry(stripe_double):
    client = stripe_double.client(max_network_retries=1, http_client=stripe.RequestsClient(timeout=0.3))
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="timeout_after", delay=1.0)

    invoice = client.v1.invoices.create(params={"customer": customer.id})

    attempts = stripe_double.requests_to("POST", "/v1/invoices")
    assert [a.replayed for a in attempts] == [False, True]
    assert [i["id"] for i in stripe_double.invoices] == [invoice.id]


def test_a_timeout_without_retries_is_a_connection_error(stripe_double):
    client = stripe_double.client(http_client=stripe.RequestsClient(timeout=0.3))
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="timeout", delay=1.0)

    with pytest.raises(stripe.APIConnectionError):
        client.v1.invoices.create(params={"customer": customer.id})

    assert stripe_double.invoices == []


def test_a_crash_after_creation_loses_the_answer_but_keeps_the_invoice(stripe_double, client):
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="crash_after")
    params = {"customer": customer.id, "metadata": {"invoice_id": "42"}}
    options = {"idempotency_key": "meterline-invoice-42-create"}

    with pytest.raises(stripe.APIConnectionError) as lost:
        client.v1.invoices.create(params=params, options=options)

    assert lost.value.should_retry is True
    assert len(stripe_double.invoices) == 1
    # Retrying under the same key finds it; a new key would have made a second invoice.
    retried = client.v1.invoices.create(params=params, options=options)
    assert retried.id == stripe_double.invoices[0]["id"]
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(stripe_double.invoices) == 1


@pytest.mark.usefixtures("fast_stripe_retries")
def test_the_sdk_retry_after_a_crash_gets_the_saved_invoice(stripe_double):
    client = stripe_double.client(max_network_retries=2)
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices", kind="crash_after")

    invoice = client.v1.invoices.create(params={"customer": customer.id})

    assert [i["id"] for i in stripe_double.invoices] == [invoice.id]
    assert [r.replayed for r in stripe_double.requests_to("POST", "/v1/invoices")] == [False, True]


def test_a_crash_answered_with_500_still_created_the_invoice(stripe_double, client):
    customer = _customer(client)
    stripe_double.inject(r"/v1/invoices/[^/]+/finalize", kind="crash_after_500")
    invoice = _draft_with_items(client, customer.id, 100)

    with pytest.raises(stripe.APIError):
        client.v1.invoices.finalize_invoice(invoice.id)

    assert client.v1.invoices.retrieve(invoice.id).status == "open"
    with pytest.raises(stripe.InvalidRequestError, match="already finalized"):
        client.v1.invoices.finalize_invoice(invoice.id)


def test_faults_match_only_their_method_and_whole_path(stripe_double, client):
    customer = _customer(client)
    invoice = client.v1.invoices.create(params={"customer": customer.id})
    fault = stripe_double.inject(r"/v1/invoices", "POST", "500", times=2)

    client.v1.invoices.list()
    client.v1.invoices.finalize_invoice(invoice.id)
    with pytest.raises(stripe.APIError):
        client.v1.invoices.create(params={"customer": customer.id})

    assert (fault.fired, fault.remaining) == (1, 1)
    stripe_double.clear_faults()
    client.v1.invoices.create(params={"customer": customer.id})


def test_unknown_fault_kinds_are_rejected(stripe_double):
    with pytest.raises(ValueError, match="unknown fault kind"):
        stripe_double.inject(r"/v1/invoices", kind="503")


# Credit notes and refunds


def _open_invoice(client: stripe.StripeClient, *amounts: int) -> stripe.Invoice:
    invoice = _draft_with_items(client, _customer(client).id, *amounts)
    return client.v1.invoices.finalize_invoice(invoice.id)


def _custom(amount: int, description: str = "credit") -> dict:
    return {"type": "custom_line_item", "unit_amount": amount, "quantity": 1, "description": description}


def test_a_credit_note_on_an_open_invoice_lowers_what_is_due_and_at_zero_the_invoice_is_paid(
    stripe_double, client
):
    invoice = _open_invoice(client, 1234, 766)

    note = client.v1.credit_notes.create(
        {"invoice": invoice.id, "lines": [_custom(500)], "reason": "order_change", "metadata": {"ours": "7"}}
    )

    assert (note.object, note.status, note.type, note.total, note.amount) == (
        "credit_note",
        "issued",
        "pre_payment",
        500,
        500,
    )
    assert (note.pre_payment_amount, note.post_payment_amount, note.refunds) == (500, 0, [])
    assert note.number == f"{invoice.number}-CN-01" and note.metadata["ours"] == "7"
    assert [(line.type, line.amount, line.unit_amount) for line in note.lines.data] == [
        ("custom_line_item", 500, 500)
    ]
    after = client.v1.invoices.retrieve(invoice.id)
    assert (after.total, after.amount_due, after.amount_remaining, after.pre_payment_credit_notes_amount) == (
        2000,
        1500,
        1500,
        500,
    )
    assert after.status == "open"
    item_line = after.lines.data[0].id
    rest = client.v1.credit_notes.create(
        {
            "invoice": invoice.id,
            "lines": [
                {"type": "invoice_line_item", "invoice_line_item": item_line, "amount": 1234},
                _custom(266),
            ],
        }
    )
    assert rest.number == f"{invoice.number}-CN-02" and rest.lines.data[0].invoice_line_item == item_line
    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.amount_due, paid.amount_remaining, paid.amount_paid) == ("paid", 0, 0, 0)
    assert [e["data"]["object"]["id"] for e in stripe_double.events("credit_note.created")] == [
        note.id,
        rest.id,
    ]
    assert stripe_double.events("invoice.paid")[-1]["data"]["object"]["id"] == invoice.id
    listed = client.v1.credit_notes.list({"invoice": invoice.id})
    assert [n.id for n in listed.data] == [rest.id, note.id]  # newest first
    assert client.v1.credit_notes.retrieve(note.id).total == 500
    for obj, resource in [(note, "credit_note"), (note.lines.data[0], "credit_note_line_item")]:
        assert set(obj.to_dict()) == set(example(resource)), resource


def test_after_payment_a_credit_note_is_refunded_or_recorded_out_of_band_exactly(stripe_double, client):
    invoice = _open_invoice(client, 2000)
    stripe_double.transition(invoice.id, "pay_by_card")

    with pytest.raises(stripe.InvalidRequestError) as unbalanced:
        client.v1.credit_notes.create({"invoice": invoice.id, "lines": [_custom(700)], "refund_amount": 600})
    assert unbalanced.value.param == "refund_amount"
    refunded = client.v1.credit_notes.create(
        {"invoice": invoice.id, "lines": [_custom(700)], "refund_amount": 700}
    )
    outside = client.v1.credit_notes.create(
        {"invoice": invoice.id, "lines": [_custom(300)], "out_of_band_amount": 300}
    )

    assert (refunded.type, refunded.post_payment_amount, refunded.out_of_band_amount) == (
        "post_payment",
        700,
        None,
    )
    (refund_link,) = refunded.refunds
    refund = client.v1.refunds.retrieve(refund_link.refund)
    assert (refund.object, refund.amount, refund.status, refund_link.amount_refunded) == (
        "refund",
        700,
        "succeeded",
        700,
    )
    assert set(refund.to_dict()) == set(example("refund"))
    assert (outside.out_of_band_amount, outside.refunds) == (300, [])
    after = client.v1.invoices.retrieve(invoice.id)
    assert (after.amount_paid, after.post_payment_credit_notes_amount, after.amount_remaining) == (
        2000,
        1000,
        0,
    )
    assert [e["data"]["object"]["id"] for e in stripe_double.events("refund.created")] == [refund.id]


def test_an_invoice_paid_out_of_band_has_no_payment_to_refund(stripe_double, client):
    invoice = _open_invoice(client, 2000)
    stripe_double.transition(invoice.id, "pay")

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.credit_notes.create({"invoice": invoice.id, "lines": [_custom(100)], "refund_amount": 100})

    assert refused.value.param == "refund_amount"
    assert stripe_double.credit_notes == [] and stripe_double.refunds == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (
            {
                "lines": [{"type": "custom_line_item", "unit_amount": 1, "quantity": 1, "description": "x"}],
                "amount": 1,
            },
            "lines",
        ),
        ({}, "lines"),
        ({"lines": [{"unit_amount": 1, "description": "x"}]}, "lines[0][type]"),
        ({"lines": [{"type": "custom_line_item", "unit_amount": 1}]}, "lines[0][description]"),
        (
            {"lines": [{"type": "invoice_line_item", "invoice_line_item": "il_nope", "amount": 1}]},
            "lines[0][invoice_line_item]",
        ),
        ({"lines": [{"type": "invoice_line_item", "invoice_line_item": "il_x"}]}, "lines[0][amount]"),
        ({"lines": [{"type": "custom_line_item", "unit_amount": 2001, "description": "x"}]}, "lines"),
        ({"amount": 100, "credit_amount": 100}, "credit_amount"),
        ({"amount": 100, "reason": "because"}, "reason"),
    ],
)
def test_credit_notes_stripe_would_refuse_are_refused_and_change_nothing(
    stripe_double, client, params, param
):
    invoice = _open_invoice(client, 2000)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.credit_notes.create({"invoice": invoice.id, **params})

    assert refused.value.param == param
    assert stripe_double.credit_notes == []
    assert client.v1.invoices.retrieve(invoice.id).amount_due == 2000


def test_credit_notes_never_credit_more_than_a_line_or_the_invoice_and_not_drafts_or_void_ones(client):
    invoice = _open_invoice(client, 1500, 500)
    line = client.v1.invoices.retrieve(invoice.id).lines.data[0].id
    client.v1.credit_notes.create(
        {
            "invoice": invoice.id,
            "lines": [{"type": "invoice_line_item", "invoice_line_item": line, "amount": 1000}],
        }
    )
    with pytest.raises(stripe.InvalidRequestError) as over_line:
        client.v1.credit_notes.create(
            {
                "invoice": invoice.id,
                "lines": [{"type": "invoice_line_item", "invoice_line_item": line, "amount": 501}],
            }
        )
    assert over_line.value.param == "lines[0][amount]"
    with pytest.raises(stripe.InvalidRequestError) as over_invoice:
        client.v1.credit_notes.create({"invoice": invoice.id, "amount": 1001})
    assert over_invoice.value.param == "amount"
    draft = _draft_with_items(client, _customer(client).id, 100)
    voided = _open_invoice(client, 100)
    client.v1.invoices.void_invoice(voided.id)
    for target in (draft.id, voided.id):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.credit_notes.create({"invoice": target, "amount": 50})
        assert refused.value.param == "invoice"


def test_a_credit_note_create_is_replayed_under_its_idempotency_key(stripe_double, client):
    invoice = _open_invoice(client, 2000)
    params = {"invoice": invoice.id, "lines": [_custom(100)]}

    first = client.v1.credit_notes.create(params, {"idempotency_key": "cn-1"})
    again = client.v1.credit_notes.create(params, {"idempotency_key": "cn-1"})

    assert first.id == again.id and len(stripe_double.credit_notes) == 1
    assert client.v1.invoices.retrieve(invoice.id).amount_due == 1900


# Events and webhooks


def test_state_changes_emit_the_events_stripe_sends(stripe_double, client):
    invoice = _draft_with_items(client, _customer(client).id, 100)
    client.v1.invoices.finalize_invoice(invoice.id)
    client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})

    types = [e["type"] for e in stripe_double.events() if e["type"].startswith("invoice.")]
    assert types == ["invoice.created", "invoice.finalized", "invoice.paid"]
    listed = client.v1.events.list(params={"type": "invoice.*"})
    assert [e.type for e in listed.data] == types[::-1]
    paid = stripe_double.events("invoice.paid")[0]
    assert paid["data"]["object"]["status"] == "paid"
    (pay_request,) = stripe_double.requests_to("POST", r"/v1/invoices/[^/]+/pay")
    assert paid["request"] == {"id": pay_request.request_id, "idempotency_key": pay_request.idempotency_key}


def test_stripe_side_transitions_go_through_the_same_rules(stripe_double, client):
    invoice = _draft_with_items(client, _customer(client).id, 100)
    client.v1.invoices.finalize_invoice(invoice.id)

    stripe_double.transition(invoice.id, "mark_uncollectible")

    assert client.v1.invoices.retrieve(invoice.id).status == "uncollectible"
    assert stripe_double.events("invoice.marked_uncollectible")[0]["request"]["id"] is None


def test_a_built_webhook_is_accepted_by_stripe_construct_event(stripe_double, client):
    invoice = _draft_with_items(client, _customer(client).id, 100)
    paid = client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})

    delivery = build_webhook(stripe_double.invoice(paid.id), WEBHOOK_SECRET, event_type="invoice.paid")
    event = stripe.Webhook.construct_event(
        delivery.payload, delivery.headers["Stripe-Signature"], WEBHOOK_SECRET
    )

    assert (event.type, event.data.object.id, event.data.object.status) == ("invoice.paid", paid.id, "paid")
    assert set(event.to_dict()) == set(example("event"))


def test_an_emitted_event_is_deliverable_and_its_signature_is_checked(stripe_double, client):
    invoice = _draft_with_items(client, _customer(client).id, 100)
    client.v1.invoices.finalize_invoice(invoice.id)
    finalized = stripe_double.events("invoice.finalized")[0]

    rolled = build_webhook(finalized, ["whsec_old", WEBHOOK_SECRET])
    stale = build_webhook(finalized, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)

    assert (
        stripe.Webhook.construct_event(rolled.payload, rolled.signature, WEBHOOK_SECRET).id == finalized["id"]
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(rolled.payload, rolled.signature, "whsec_wrong")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(stale.payload, stale.signature, WEBHOOK_SECRET)
    tampered = rolled.payload.replace(b'"status": "open"', b'"status": "paid"')
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, rolled.signature, WEBHOOK_SECRET)


def test_signature_header_matches_the_sdks_own_signer():
    payload = '{"id": "evt_1"}'

    ours = signature_header(payload, WEBHOOK_SECRET, timestamp=1700000000)
    sdks = stripe.WebhookSignature._compute_signature(f"1700000000.{payload}", WEBHOOK_SECRET)

    assert ours == f"t=1700000000,v1={sdks}"
