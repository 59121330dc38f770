"""Agents and API keys in the portal: a created key is shown once and works; its expiry is checked; revoking
asks first and needs CSRF."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from tenants.models import APIKey, Tenant
from tests.conftest import AgentClient
from tests.usage.builders import event

pytestmark = pytest.mark.django_db


def test_created_key_is_shown_once_and_works_and_revoking_it_refuses_it(world, owner_client):
    response = owner_client.post("/keys/new/", {"agent": world.agents[0].pk, "label": "ci"}, follow=True)
    page = response.content.decode()
    key = page.split('id="new-key-value">')[1].split("<")[0]
    assert key.startswith("mlk_live_")
    assert key not in owner_client.get("/agents/").content.decode()  # shown once
    assert AgentClient(key).post("/api/v1/events", {"events": [event("k1")]}).status_code == 200

    api_key = APIKey.objects.get(label="ci")
    owner_client.post(f"/keys/{api_key.pk}/revoke/")
    assert AgentClient(key).post("/api/v1/events", {"events": [event("k2")]}).status_code == 401


def test_portal_forms_enforce_csrf(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users[0])
    key = APIKey.objects.get(tenant=world.tenants[0])
    assert client.post(f"/keys/{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "UTC", "Pacific/Pago_Pago"])  # UTC+14 … UTC-11
@pytest.mark.parametrize(
    "typed",
    [
        lambda now: (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"),  # a minute ago
        lambda now: now.strftime("%Y-%m-%dT%H:%M"),  # this minute: already started, so past
        lambda now: "2001-01-01T00:00",
        lambda now: "0001-01-01T00:00",  # the calendar's first minute, before UTC in half the zones
        lambda now: "9999-12-31T23:59",  # its last, after UTC's in the other half
        lambda now: (now + timedelta(days=3660)).strftime("%Y-%m-%dT%H:%M"),  # beyond ten years
        lambda now: "31/12/2030 25:61",
    ],
)
def test_an_expiry_outside_the_next_ten_years_is_a_form_error_and_stores_nothing(
    world, owner_client, zone, typed
):
    tenant = world.tenants[0]
    Tenant.objects.filter(pk=tenant.pk).update(timezone=zone)
    keys_before = APIKey.objects.count()
    now = timezone.now().astimezone(ZoneInfo(zone))

    response = owner_client.post(
        "/keys/new/", {"agent": world.agents[0].pk, "label": "past", "expires_at": typed(now)}
    )

    assert response.status_code == 400
    assert response.context["key_form"].errors["expires_at"]
    assert "expires_at" in response.content.decode() and 'class="errorlist"' in response.content.decode()
    assert APIKey.objects.count() == keys_before


def test_an_expiry_is_read_in_the_tenants_time_zone(world, owner_client):
    tenant = world.tenants[0]
    Tenant.objects.filter(pk=tenant.pk).update(timezone="Asia/Kolkata")  # UTC+05:30
    response = owner_client.post(
        "/keys/new/", {"agent": world.agents[0].pk, "label": "soon", "expires_at": "2030-06-01T09:30"}
    )
    assert response.status_code == 302
    stored = APIKey.objects.get(label="soon").expires_at
    assert stored == datetime(2030, 6, 1, 4, 0, tzinfo=UTC)


def test_revoking_asks_first_on_a_page_of_its_own(world, owner_client):
    api_key = APIKey.objects.get(tenant=world.tenants[0])
    agents_page = owner_client.get("/agents/").content.decode()
    assert f'href="/keys/{api_key.pk}/revoke/"' in agents_page  # a link to the question, not a form that acts

    question = owner_client.get(f"/keys/{api_key.pk}/revoke/")
    assert question.status_code == 200
    assert f"mlk_live_{api_key.key_id}_" in question.content.decode()
    assert 'method="post"' in question.content.decode()
    api_key.refresh_from_db()
    assert api_key.revoked_at is None  # asking changes nothing

    assert owner_client.post(f"/keys/{api_key.pk}/revoke/").status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert AgentClient(world.keys[0]).post("/api/v1/events", {"events": [event("r1")]}).status_code == 401


def test_a_new_key_comes_with_a_copy_button_for_it(world, owner_client):
    page = owner_client.post("/keys/new/", {"agent": world.agents[0].pk}, follow=True).content.decode()
    assert 'id="new-key-value"' in page and 'data-copy="new-key-value"' in page
    assert "/static/portal/portal.js" in page
