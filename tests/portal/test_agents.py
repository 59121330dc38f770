"""Agents and API keys in the portal: a created key is shown once and works; revoking needs CSRF."""

import pytest
from django.test import Client

from tenants.models import APIKey
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
