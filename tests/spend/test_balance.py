"""Prepaid credit and pre-call holds (issue 15 parts 1–4, 9, 10; decision 018). Amounts are worked out here:
a plan of a $10 base fee and $0.01 a TTS character, so the unbilled usage of the period is 10 + 0.01 × chars."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from billing import credits, invoicing
from billing.models import Invoice, LedgerEntry
from spend.models import Hold, SpendPolicy
from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import event

pytestmark = pytest.mark.django_db
PRICES = [{"meter_id": "tts_characters", "unit_amount": Decimal("0.01"), "unit_size": Decimal(1)}]


@pytest.fixture
def prepaid(tenant):
    subscribe(
        tenant,
        make_plan(base_fee="10.00", prices=PRICES),
        starts_on=invoicing.current_period(tenant)[0],  # subscribed this month: one base fee unbilled
    )
    credits.grant(tenant, "100.00", source="purchased", reason="first top-up")
    return tenant


def balance(client) -> dict:
    response = client.get("/api/v1/balance")
    assert response.status_code == 200, response.content
    return {k: (Decimal(v) if k not in ("currency", "policy") else v) for k, v in response.json().items()}


def hold(client, session_id="call-1", **body):
    return client.post("/api/v1/authorizations", {"session_id": session_id, **body})


def test_the_balance_reflects_an_accepted_batch_at_once(agent_client, prepaid):
    assert balance(agent_client) == {
        "currency": "USD",
        "ledger_balance": Decimal(100),
        "unbilled_usage": Decimal(10),  # the base fee of the period
        "held": Decimal(0),
        "available": Decimal(90),
        "policy": "postpaid",
    }
    accepted = agent_client.post("/api/v1/events", {"events": [event("a", usage={"tts_characters": 250})]})
    assert accepted.json()["accepted"] == 1
    after = balance(agent_client)
    assert after["unbilled_usage"] == Decimal("12.50") and after["available"] == Decimal("87.50")

    assert hold(agent_client, amount="7.25").status_code == 201
    assert balance(agent_client)["held"] == Decimal("7.25")
    assert balance(agent_client)["available"] == Decimal("80.25")


def test_the_ledger_is_append_only_and_refuses_what_no_path_should_do(prepaid):
    grant = prepaid.credit_grants.get()
    other = TenantFactory()
    other_invoice = Invoice.objects.create(
        tenant=other,
        period_start=timezone.localdate().replace(day=1) - timedelta(days=62),
        period_end=timezone.localdate().replace(day=1) - timedelta(days=31),
        currency="USD",
    )
    with pytest.raises(IntegrityError), transaction.atomic():  # a grant is posted once
        LedgerEntry.objects.create(tenant=prepaid, grant=grant, kind="grant", amount=Decimal(1))
    with pytest.raises(IntegrityError), transaction.atomic():  # an entry names its own tenant's invoice
        LedgerEntry.objects.create(
            tenant=prepaid, grant=grant, kind="application", amount=Decimal(-1), invoice=other_invoice
        )
    with pytest.raises(IntegrityError), transaction.atomic():  # and its own tenant's grant
        LedgerEntry.objects.create(
            tenant=other, grant=grant, kind="adjustment", amount=Decimal(1), reason="x"
        )
    entry = LedgerEntry.objects.get(grant=grant)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=Decimal(1000))
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.filter(pk=entry.pk).delete()

    credits.reverse(grant, "30.00", reason="duplicate purchase")
    with pytest.raises(credits.CreditError):
        credits.reverse(grant, "70.01", reason="too much")
    assert credits.ledger_balance(prepaid) == Decimal("70.00")


def test_expired_credit_leaves_the_balance_as_an_entry(prepaid):
    short = credits.grant(
        prepaid, "5.00", source="promotional", reason="trial", expires_at=timezone.now() + timedelta(days=1)
    )
    now = timezone.now()
    assert credits.ledger_balance(prepaid, now) == Decimal("105.00")
    later = now + timedelta(days=2)
    assert credits.ledger_balance(prepaid, later) == Decimal("100.00")
    expiry = LedgerEntry.objects.get(grant=short, kind="expiry")
    assert expiry.amount == Decimal("-5.00")
    assert credits.expire_due(prepaid, later) == 0  # once


def test_holds_under_each_policy(agent_client, prepaid):
    # postpaid and prepaid-soft never refuse
    assert hold(agent_client, "a", amount="500.00").status_code == 201
    call_command("spend_policy", tenant=prepaid.slug, policy="prepaid-soft")
    assert hold(agent_client, "b", amount="500.00").status_code == 201
    Hold.objects.update(released_at=timezone.now())
    # prepaid-hard refuses what the available balance (90) does not cover, with both amounts
    call_command("spend_policy", tenant=prepaid.slug, policy="prepaid-hard")
    refused = hold(agent_client, "c", amount="90.01")
    assert refused.status_code == 402
    body = refused.json()
    assert (body["available"], body["required"], body["currency"]) == ("90", "90.01", "USD")
    assert refused["Content-Type"] == "application/problem+json"
    assert not Hold.objects.filter(session_id="c").exists()
    granted = hold(agent_client, "c", amount="90.00")
    assert granted.status_code == 201 and granted.json()["available"] == "0"
    # an overdraft lets calls go that far below zero
    call_command("spend_policy", tenant=prepaid.slug, policy="prepaid-hard", overdraft="5")
    assert hold(agent_client, "d", amount="5.00").status_code == 201
    assert hold(agent_client, "e", amount="0.01").status_code == 402
    assert SpendPolicy.objects.get(tenant=prepaid).overdraft == 5


def test_a_hold_ends_with_its_session_is_extended_and_released(agent_client, prepaid):
    created = hold(agent_client, "talk", amount="20.00", ttl_seconds=120).json()
    assert Decimal(created["available"]) == Decimal(70)
    extended = agent_client.post(
        f"/api/v1/authorizations/{created['id']}/extend", {"ttl_seconds": 600, "amount": "25.00"}
    )
    assert extended.status_code == 200 and extended.json()["amount"] == "25"
    assert Decimal(extended.json()["available"]) == Decimal(65)
    assert agent_client.put(
        "/api/v1/sessions/talk", {"ended_at": timezone.now().isoformat()}
    ).status_code in (200, 201)
    assert balance(agent_client)["held"] == 0
    assert agent_client.post(f"/api/v1/authorizations/{created['id']}/extend", {}).status_code == 409
    again = agent_client.post(f"/api/v1/authorizations/{created['id']}/release", {})
    assert again.status_code == 200 and again.json()["released_at"]  # idempotent
    # an expired hold stops counting by itself
    short = hold(agent_client, "quick", amount="3.00", ttl_seconds=60).json()
    Hold.objects.filter(pk=short["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert balance(agent_client)["held"] == 0


def test_a_hold_by_expected_duration(agent_client, prepaid, agent):
    plan = prepaid.subscriptions.get().plan
    # no recent calls and no plan default: a clear 400
    refused = hold(agent_client, "x", expected_seconds=60)
    assert refused.status_code == 400 and refused.json()["errors"][0]["pointer"] == "/expected_seconds"
    plan.expected_cost_per_minute = Decimal("0.12")
    plan.save()
    made = hold(agent_client, "x", expected_seconds=300)
    assert made.status_code == 201 and made.json()["amount"] == "0.6"  # 5 minutes at $0.12
    # once the tenant has calls, their own cost per second of session: 600 characters ($6) over 120 s
    now = timezone.now()
    agent_client.put(
        "/api/v1/sessions/past",
        {
            "started_at": (now - timedelta(minutes=10)).isoformat(),
            "ended_at": (now - timedelta(minutes=8)).isoformat(),
        },
    )
    agent_client.post(
        "/api/v1/events", {"events": [event("p", session_id="past", usage={"tts_characters": 600})]}
    )
    assert hold(agent_client, "y", expected_seconds=30).json()["amount"] == "1.5"  # $0.05/s × 30 s


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"amount": "1.00", "expected_seconds": 10}, "/amount"),
        ({}, "/amount"),
        ({"amount": "0"}, "/amount"),
        ({"amount": "1.001"}, "/amount"),
        ({"amount": "abc"}, "/amount"),
        ({"amount": "1", "ttl_seconds": 5}, "/ttl_seconds"),
        ({"amount": "1", "color": "red"}, "/color"),
        ({"amount": "1", "session_id": "bad id!"}, "/session_id"),
    ],
)
def test_bad_authorizations_are_400s_naming_the_field(agent_client, prepaid, body, pointer):
    response = agent_client.post("/api/v1/authorizations", {"session_id": "ok", **body})
    assert response.status_code == 400, response.content
    assert pointer in [e["pointer"] for e in response.json()["errors"]]
    assert not Hold.objects.exists()


def test_another_tenants_hold_is_not_found(agent_client, prepaid):
    other = AgentClient(api_key_for(AgentFactory()))
    made = hold(agent_client, amount="1.00").json()
    assert other.post(f"/api/v1/authorizations/{made['id']}/release", {}).status_code == 404
    assert other.post(f"/api/v1/authorizations/{made['id']}/extend", {}).status_code == 404
    assert Hold.objects.get().released_at is None


def test_grant_credits_command(tenant, capsys):
    call_command(
        "grant_credits",
        tenant=tenant.slug,
        amount="25.50",
        reason="goodwill after an outage",
        source="goodwill",
        priority=5,
        expires="2099-01-01",
    )
    grant = tenant.credit_grants.get()
    assert (grant.amount, grant.source, grant.priority) == (Decimal("25.50"), "goodwill", 5)
    assert credits.ledger_balance(tenant) == Decimal("25.50")
    from django.core.management.base import CommandError

    for bad in (
        {"amount": "-1"},
        {"amount": "1.001"},
        {"amount": "x"},
        {"expires": "soon"},
        {"tenant": "nope"},
    ):
        with pytest.raises(CommandError):
            call_command("grant_credits", **{"tenant": tenant.slug, "amount": "1", "reason": "r", **bad})
    assert tenant.credit_grants.count() == 1


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_authorizations_for_a_balance_that_fits_ten():
    """Real concurrent clients on PostgreSQL: exactly ten $10 holds fit a $100 available balance."""
    tenant = TenantFactory()
    subscribe(
        tenant, make_plan(base_fee="0", prices=PRICES), starts_on=timezone.localdate() - timedelta(days=400)
    )
    credits.grant(tenant, "100.00", source="purchased", reason="top-up")
    SpendPolicy.objects.create(tenant=tenant, policy="prepaid-hard")
    clients = [AgentClient(api_key_for(AgentFactory(tenant=tenant))) for _ in range(50)]
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def ask(index: int, client: AgentClient) -> None:
        try:
            barrier.wait()
            statuses.append(hold(client, f"call-{index}", amount="10.00").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 10 + [402] * 40
    assert Hold.objects.filter(tenant=tenant).count() == 10
    from spend import control

    assert control.balance(tenant).available == 0
    assert invoicing.current_period(tenant)  # the tenant is billable as usual


@pytest.mark.parametrize(
    "path", ["/api/v1/authorizations/abc/extend", "/api/v1/authorizations/1,2/release", "/api/v1/nope"]
)
def test_a_post_to_a_path_no_route_names_is_a_problem_404(agent_client, path):
    response = agent_client.post(path, {})
    assert response.status_code == 404 and response["Content-Type"] == "application/problem+json"


def test_staff_grant_reverse_and_adjust_credit_in_the_admin(client, tenant):
    from tests.factories import UserFactory

    staff = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    added = client.post(
        "/admin/billing/creditgrant/add/",
        {
            "tenant": tenant.pk,
            "source": "goodwill",
            "amount": "40.00",
            "priority": 0,
            "effective_at_0": "2026-01-01",
            "effective_at_1": "00:00:00",
            "reason": "outage on the 3rd",
            "entries-TOTAL_FORMS": 0,
            "entries-INITIAL_FORMS": 0,
        },
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    grant = tenant.credit_grants.get()
    assert grant.created_by == staff and credits.ledger_balance(tenant) == Decimal(40)
    # a reversal above what is left is refused by the form, naming the amount
    refused = client.post(
        "/admin/billing/ledgerentry/add/",
        {"grant": grant.pk, "kind": "reversal", "amount": "40.01", "reason": "x"},
    )
    assert refused.status_code == 200 and "left" in refused.content.decode()
    assert (
        client.post(
            "/admin/billing/ledgerentry/add/",
            {"grant": grant.pk, "kind": "reversal", "amount": "15", "reason": "partly billed"},
        ).status_code
        == 302
    )
    assert (
        client.post(
            "/admin/billing/ledgerentry/add/",
            {"grant": grant.pk, "kind": "adjustment", "amount": "-5", "reason": "typo"},
        ).status_code
        == 302
    )
    no_reason = client.post(
        "/admin/billing/ledgerentry/add/",
        {"grant": grant.pk, "kind": "adjustment", "amount": "1", "reason": " "},
    )
    assert no_reason.status_code == 200
    assert credits.ledger_balance(tenant) == Decimal(20)
    assert client.get(f"/admin/billing/creditgrant/{grant.pk}/change/").status_code == 200
    assert (
        client.get("/admin/spend/hold/").status_code == 200
        and client.get("/admin/spend/spendpolicy/").status_code == 200
    )


def test_asking_again_for_a_call_renews_its_one_hold(agent_client, prepaid):
    first = hold(agent_client, "call-9", amount="4.00", ttl_seconds=120).json()
    again = hold(agent_client, "call-9", amount="4.00", ttl_seconds=600).json()  # a retry: the same hold
    assert again["id"] == first["id"] and again["expires_at"] > first["expires_at"]
    more = hold(agent_client, "call-9", amount="6.00").json()  # a new estimate raises it
    assert more["id"] == first["id"] and more["amount"] == "6"
    assert Hold.objects.count() == 1 and balance(agent_client)["held"] == Decimal(6)


def test_the_dashboard_shows_balance_burn_and_runway(agent_client, prepaid, client):
    from tests.factories import MembershipFactory

    agent_client.post("/api/v1/events", {"events": [event("a", usage={"tts_characters": 250})]})
    client.force_login(MembershipFactory(tenant=prepaid).user)
    page = client.get("/").content.decode()
    card = page[page.index('data-testid="prepaid-balance"') :].split("</div></div>")[0]
    assert 'data-testid="available">$87.50<' in card  # 100 − (10 fee + 2.50 usage)
    assert "burn $2.50 in the last hour, $2.50 in the last 24 h; about 35.0 days left" in card
    # a postpaid tenant without credit sees no such card
    other = TenantFactory()
    client.force_login(MembershipFactory(tenant=other).user)
    assert 'data-testid="prepaid-balance"' not in client.get("/").content.decode()


def test_a_hold_by_duration_in_a_currency_without_minor_units_holds_at_least_one_unit(db):
    tenant = TenantFactory(currency="JPY")
    plan = make_plan(base_fee="0", prices=[], currency="JPY")
    plan.expected_cost_per_minute = Decimal("0.5")  # ¥0.004 for half a second: rounds to nothing
    plan.save()
    subscribe(tenant, plan)
    client = AgentClient(api_key_for(AgentFactory(tenant=tenant)))
    made = client.post("/api/v1/authorizations", {"session_id": "short", "expected_seconds": 1})
    assert made.status_code == 201 and made.json()["amount"] == "1" and made.json()["currency"] == "JPY"
    assert client.post("/api/v1/authorizations", {"session_id": "x", "amount": "1.5"}).status_code == 400


def test_a_repeated_read_prices_nothing_and_every_change_it_reads_prices_again(agent_client, prepaid):
    """The unbilled usage is cached per process behind the catalogue token and the tenant's generation: a read
    with nothing changed reads no rollups, and each kind of change a price depends on (usage, a price, the
    tenant's invoices) is in the very next read."""
    from django.db.models import F
    from django.test.utils import CaptureQueriesContext

    from billing.models import Price

    def read() -> tuple[Decimal, list[str]]:
        with CaptureQueriesContext(connection) as queries:
            unbilled = balance(agent_client)["unbilled_usage"]
        return unbilled, [q["sql"] for q in queries.captured_queries]

    def prices_again(sql: list[str]) -> bool:
        return any("usage_agentrollup" in statement for statement in sql)

    assert read()[0] == Decimal(10)
    unbilled, sql = read()
    assert unbilled == Decimal(10) and not prices_again(sql)

    agent_client.post("/api/v1/events", {"events": [event("a", usage={"tts_characters": 100})]})
    unbilled, sql = read()
    assert unbilled == Decimal(11) and prices_again(sql)
    assert not prices_again(read()[1])

    Price.objects.filter(meter_id="tts_characters").update(unit_amount=F("unit_amount") * 2)
    unbilled, sql = read()
    assert unbilled == Decimal(12) and prices_again(sql)

    # this period invoiced and finalized (as at the month's end): nothing of it is unbilled any more
    start = invoicing.current_period(prepaid)[0]
    invoice = invoicing.generate_invoice(prepaid.pk, start)
    invoicing.finalize_invoice(invoice.pk, force=True)
    unbilled, sql = read()
    assert unbilled == Decimal(0) and prices_again(sql)

    # usage that arrives for it now is late usage, billed on the next invoice: unbilled again at once
    agent_client.post("/api/v1/events", {"events": [event("b", usage={"tts_characters": 100})]})
    unbilled, sql = read()
    assert unbilled == Decimal(2) and prices_again(sql)
