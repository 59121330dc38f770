"""The Webhooks page: managers add, edit, disable, roll, ping and resend; the secret is shown once; viewers
see endpoints and deliveries but never a secret."""

import re

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from notifications.models import WebhookDelivery, WebhookEndpoint
from tenants.models import Membership
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def development(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOKS_ALLOW_HTTP = True


def add_endpoint(client, url="https://hooks.example.com/meterline", **fields):
    return client.post(
        "/webhooks/new/", {"url": url, "description": "ERP", "event_types": ["invoice.paid"], **fields}
    )


def test_a_manager_adds_an_endpoint_and_sees_its_secret_once(world, owner_client):
    response = add_endpoint(owner_client)

    endpoint = WebhookEndpoint.objects.get(tenant=world.tenants[0])
    assert response.status_code == 302 and response.url == f"/webhooks/{endpoint.pk}/"
    assert (endpoint.url, endpoint.description, endpoint.event_types) == (
        "https://hooks.example.com/meterline",
        "ERP",
        ["invoice.paid"],
    )
    first = owner_client.get(response.url).content.decode()
    assert endpoint.secret in first and re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", endpoint.secret)
    assert endpoint.secret not in owner_client.get(response.url).content.decode()
    assert endpoint.secret not in owner_client.get("/webhooks/").content.decode()


def test_viewers_see_endpoints_and_deliveries_but_never_a_secret_and_cannot_manage(
    world, owner_client, client
):
    add_endpoint(owner_client)
    endpoint = WebhookEndpoint.objects.get()
    viewer = MembershipFactory(tenant=world.tenants[0], role=Membership.Role.VIEWER).user
    client.force_login(viewer)

    for page in ("/webhooks/", f"/webhooks/{endpoint.pk}/"):
        html = client.get(page).content.decode()
        assert endpoint.url in html and "whsec_" not in html and "Roll secret" not in html
    client.post(f"/webhooks/{endpoint.pk}/roll-secret/")  # refused: the next page must not show a secret
    assert "whsec_" not in client.get(f"/webhooks/{endpoint.pk}/").content.decode()
    for action in ("roll-secret", "disable", "delete", "ping"):
        assert client.post(f"/webhooks/{endpoint.pk}/{action}/").status_code == 403
    assert client.post(f"/webhooks/{endpoint.pk}/", {"url": "https://evil.example.com/"}).status_code == 403
    assert add_endpoint(client).status_code == 403
    endpoint.refresh_from_db()
    assert endpoint.is_enabled and endpoint.url == "https://hooks.example.com/meterline"


def test_rolling_shows_the_new_secret_once_and_keeps_the_old_one_for_24_hours(world, owner_client):
    add_endpoint(owner_client)
    endpoint = WebhookEndpoint.objects.get()
    old = endpoint.secret

    owner_client.post(f"/webhooks/{endpoint.pk}/roll-secret/")

    endpoint.refresh_from_db()
    assert endpoint.previous_secret == old and endpoint.secret != old
    hours = (endpoint.previous_secret_expires_at - timezone.now()).total_seconds() / 3600
    assert 23.9 < hours <= 24
    html = owner_client.get(f"/webhooks/{endpoint.pk}/").content.decode()
    assert endpoint.secret in html and old not in html


def test_editing_disabling_enabling_and_deleting(world, owner_client):
    add_endpoint(owner_client)
    endpoint = WebhookEndpoint.objects.get()

    owner_client.post(f"/webhooks/{endpoint.pk}/", {"url": "https://new.example.com/h", "description": "new"})
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.description, endpoint.event_types) == (
        "https://new.example.com/h",
        "new",
        [],
    )
    owner_client.post(f"/webhooks/{endpoint.pk}/disable/")
    endpoint.refresh_from_db()
    assert not endpoint.is_enabled and endpoint.disabled_reason
    owner_client.post(f"/webhooks/{endpoint.pk}/enable/")
    endpoint.refresh_from_db()
    assert endpoint.is_enabled and not endpoint.disabled_reason
    owner_client.post(f"/webhooks/{endpoint.pk}/delete/")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://hooks.example.com/h", "https"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "link-local or cloud metadata"),
        ("https://10.0.0.7/hook", "private"),
        ("https://hooks.example.com:8443/hook", "only ports 80, 443"),
        ("ftp://hooks.example.com/hook", "only http and https"),
        ("not a url", "Enter a valid URL"),
    ],
)
def test_a_url_meterline_would_never_deliver_to_is_refused_with_the_reason(
    world, owner_client, settings, url, problem
):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.WEBHOOKS_ALLOW_HTTP = False
    response = add_endpoint(owner_client, url=url)

    assert response.status_code == 302
    assert problem in owner_client.get("/webhooks/").content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_unknown_event_types_are_refused(world, owner_client):
    add_endpoint(owner_client, event_types=["invoice.paid", "nope"])
    assert not WebhookEndpoint.objects.exists()


def test_ping_and_resend_reach_the_receiver_with_the_same_webhook_id(
    world, owner_client, development, receiver, eager_tasks, django_capture_on_commit_callbacks
):
    add_endpoint(owner_client, url=receiver.url())
    endpoint = WebhookEndpoint.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/webhooks/{endpoint.pk}/ping/")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "delivered" and delivery.event.type == "ping"
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/webhooks/{endpoint.pk}/deliveries/{delivery.pk}/resend/")

    first, again = receiver.received
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == f"evt_{delivery.event_id}"
    assert Webhook(endpoint.secret).verify(again.body, again.headers)["type"] == "ping"
    delivery.refresh_from_db()
    html = owner_client.get(f"/webhooks/{endpoint.pk}/").content.decode()
    assert "ping" in html and f"evt_{delivery.event_id}" in html and "204" in html
    assert delivery.attempts == 2 and delivery.last_latency_ms is not None
