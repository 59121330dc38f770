"""Every portal and API route that takes an object id refuses other tenants' objects with a 404.

The matrix below must name every such route: a new route without an entry fails this test, so nobody can add
an object URL without proving it is tenant-scoped.
"""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from notifications import outbox, webhooks
from notifications.models import WebhookDelivery, WebhookEndpoint
from tenants import invitations
from tenants.models import APIKey, Invitation, Membership
from tests.conftest import AgentClient
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

# route name → (method, kind, function of (world, tenant index) → URL kwargs)
MATRIX = {
    "portal:session": ("GET", "portal", lambda w, i: {"session_id": f"call-{i}"}),
    "portal:invoice": ("GET", "portal", lambda w, i: {"pk": w.invoices[i].pk}),
    "portal:invoice-print": ("GET", "portal", lambda w, i: {"pk": w.invoices[i].pk}),
    "portal:invoice-pdf": ("GET", "portal", lambda w, i: {"pk": w.invoices[i].pk}),
    "portal:key-revoke": ("POST", "portal", lambda w, i: {"pk": APIKey.objects.get(tenant=w.tenants[i]).pk}),
    "portal:member-role": ("POST", "portal", lambda w, i: {"pk": Membership.objects.get(user=w.users[i]).pk}),
    "portal:member-remove": (
        "POST",
        "portal",
        lambda w, i: {"pk": Membership.objects.get(user=w.users[i]).pk},
    ),
    "portal:invitation-revoke": (
        "POST",
        "portal",
        lambda w, i: {
            "pk": invitations.invite(w.tenants[i], f"new{i}@example.com", "viewer", None).invitation.pk
        },
    ),
    "api-session": ("GET", "api", lambda w, i: {"session_id": f"call-{i}"}),
}


def endpoint_of(world, i: int) -> WebhookEndpoint:
    tenant = world.tenants[i]
    return WebhookEndpoint.objects.filter(tenant=tenant).first() or webhooks.create_endpoint(
        tenant, "https://hooks.example.com/x"
    )


def delivery_of(world, i: int) -> dict:
    endpoint = endpoint_of(world, i)
    delivery = WebhookDelivery.objects.filter(endpoint=endpoint).first()
    if delivery is None:
        event = outbox.record(endpoint.tenant_id, "invoice.paid", {"invoice_id": 0})
        delivery = WebhookDelivery.objects.get(pk=webhooks.fan_out(event)[0])
    return {"pk": endpoint.pk, "delivery_pk": delivery.pk}


for _name in (
    "webhook",
    "webhook-enable",
    "webhook-disable",
    "webhook-delete",
    "webhook-roll",
    "webhook-ping",
):
    MATRIX[f"portal:{_name}"] = (
        "GET" if _name == "webhook" else "POST",
        "portal",
        lambda w, i: {"pk": endpoint_of(w, i).pk},
    )
MATRIX["portal:webhook-resend"] = ("POST", "portal", delivery_of)


def credit_note_of(world, i: int) -> dict:
    from billing import credit_notes
    from billing.models import CreditNote

    invoice = world.invoices[i]
    note = CreditNote.objects.filter(invoice=invoice).first() or credit_notes.issue(
        invoice.pk,
        outcome="reduce_due",
        reason="order_change",
        lines=[credit_notes.Request(invoice.lines.get(kind="base_fee").pk, amount=1)],
    )
    return {"pk": note.pk}


MATRIX["portal:credit-note"] = ("GET", "portal", credit_note_of)
MATRIX["portal:credit-note-pdf"] = ("GET", "portal", credit_note_of)


def hold_of(world, i: int) -> dict:
    from datetime import timedelta

    from django.utils import timezone

    from spend.models import Hold

    tenant = world.tenants[i]
    hold = Hold.objects.filter(tenant=tenant).first() or Hold.objects.create(
        tenant=tenant,
        agent=world.agents[i],
        session_id=f"call-{i}",
        amount=1,
        currency=tenant.currency,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    return {"hold_id": hold.pk}


def event_of(world, i: int) -> dict:
    from usage.models import UsageEvent

    return {"event_id": UsageEvent.objects.filter(tenant=world.tenants[i]).order_by("event_id")[0].event_id}


MATRIX["api-event-retract"] = ("POST", "api", event_of)
MATRIX["api-authorization-extend"] = ("POST", "api", hold_of)
MATRIX["api-authorization-release"] = ("POST", "api", hold_of)
# Tokens, not objects: the password-reset flow's uid/token and an invitation link (tests/portal/test_team.py).
NOT_TENANT_OBJECTS = {"portal:password-reset-confirm", "portal:invitation"}


def routes_with_parameters(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            namespace = f"{pattern.namespace}:" if pattern.namespace else prefix
            if pattern.app_name == "admin":
                continue  # staff-only, not tenant-scoped; covered by tests/admin_site
            yield from routes_with_parameters(pattern, namespace)
        elif isinstance(pattern, URLPattern) and pattern.pattern.converters and pattern.name:
            yield prefix + pattern.name


def test_every_route_with_an_object_id_is_in_the_isolation_matrix():
    missing = set(routes_with_parameters()) - MATRIX.keys() - NOT_TENANT_OBJECTS
    assert missing == set(), f"add these routes to MATRIX with a cross-tenant case: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_another_tenants_object_is_a_404_like_a_missing_one_and_unchanged(world, client, name):
    from django.urls import reverse

    method, kind, kwargs_for = MATRIX[name]
    route = name.split(":")[-1] if kind == "api" else name
    own, other = reverse(route, kwargs=kwargs_for(world, 0)), reverse(route, kwargs=kwargs_for(world, 1))
    missing_kwargs = {
        k: (999_999 if isinstance(v, int) else "no-such-session") for k, v in kwargs_for(world, 0).items()
    }
    missing = reverse(route, kwargs=missing_kwargs)
    keys_before = list(APIKey.objects.order_by("pk").values_list("revoked_at", flat=True))
    roles_before = list(Membership.objects.order_by("pk").values_list("role", flat=True))
    invitations_before = list(Invitation.objects.order_by("pk").values_list("revoked_at", flat=True))

    if kind == "portal":
        client.force_login(world.users[0])
        send = (lambda url: client.post(url, {"role": "viewer"})) if method == "POST" else client.get
    else:
        api = AgentClient(world.keys[0])
        send = (lambda url: api.post(url, {})) if method == "POST" else api.get

    other_response, missing_response = send(other), send(missing)
    assert other_response.status_code == missing_response.status_code == 404
    assert list(APIKey.objects.order_by("pk").values_list("revoked_at", flat=True)) == keys_before
    assert list(Membership.objects.order_by("pk").values_list("role", flat=True)) == roles_before
    assert list(Invitation.objects.order_by("pk").values_list("revoked_at", flat=True)) == invitations_before
    from spend.models import Hold

    assert not Hold.objects.filter(
        released_at__isnull=False
    ).exists()  # another tenant's hold was not touched
    if method == "GET":
        assert send(own).status_code == 200


def test_anonymous_visitors_are_sent_to_log_in(world, client):
    for url in (
        "/",
        "/usage/",
        "/sessions/",
        "/invoices/",
        f"/invoices/{world.invoices[0].pk}/pdf/",
        "/agents/",
        "/budget/",
    ):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url


def test_viewers_cannot_manage_keys_agents_budget_or_team(world, client):
    viewer = MembershipFactory(tenant=world.tenants[0], role=Membership.Role.VIEWER).user
    client.force_login(viewer)
    key = APIKey.objects.get(tenant=world.tenants[0])
    admin_member = Membership.objects.get(user=world.users[0])

    assert client.get("/agents/").status_code == 200  # reading is fine
    assert client.post(f"/keys/{key.pk}/revoke/").status_code == 403
    assert client.post("/keys/new/", {"agent": world.agents[0].pk}).status_code == 403
    assert client.post("/agents/new/", {"name": "sneaky"}).status_code == 403
    assert client.post("/budget/", {"monthly_amount": "10", "thresholds": ["50"]}).status_code == 403
    assert client.post(f"/team/{admin_member.pk}/role/", {"role": "viewer"}).status_code == 403
    key.refresh_from_db()
    admin_member.refresh_from_db()
    assert key.revoked_at is None and admin_member.role == "owner"


def test_the_tenant_switcher_only_offers_the_users_own_tenants(world, client):
    user = world.users[0]
    MembershipFactory(user=user, tenant=world.tenants[1], role=Membership.Role.VIEWER)
    client.force_login(user)

    assert world.tenants[0].name in client.get("/").content.decode()
    client.post("/switch/", {"tenant": world.tenants[1].pk})
    assert client.get(f"/invoices/{world.invoices[1].pk}/").status_code == 200
    assert client.get(f"/invoices/{world.invoices[0].pk}/").status_code == 404

    stranger = MembershipFactory().tenant
    assert client.post("/switch/", {"tenant": stranger.pk}).status_code == 404
