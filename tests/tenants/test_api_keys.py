"""API keys: the command, storage, and authentication on every request (DESIGN §2)."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tenants.authentication import APIKeyRateThrottle, find_key
from tenants.models import Agent, APIKey, Tenant
from tests.conftest import AgentClient
from tests.factories import AgentFactory, TenantFactory, api_key_for
from tests.usage.builders import event, stored_count

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"


def run_issue_api_key(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("issue_api_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_issue_api_key_creates_what_is_missing_and_prints_only_the_key():
    out, err = run_issue_api_key("--tenant", "acme", "--agent", "front-desk", "--create")

    key = out.strip()
    assert out == key + "\n" and key.startswith("mlk_live_")
    assert "created tenant" in err and "created agent" in err
    agent = Agent.objects.get(tenant__slug="acme", name="front-desk")
    stored = APIKey.objects.get(agent=agent)
    assert key not in (stored.secret_hash, stored.key_id) and stored.key_id in key
    assert AgentClient(key).post(URL, {"events": [event()]}).status_code == 200

    second, _ = run_issue_api_key("--tenant", "acme", "--agent", "front-desk")
    assert second.strip() != key and APIKey.objects.filter(agent=agent).count() == 2
    assert Tenant.objects.filter(slug="acme").count() == 1


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\t", "\u2028"])  # (a command line cannot hold NUL)
def test_agent_names_are_matched_in_full(ending):
    """A pattern anchored with "$" lets a trailing newline through; an agent's name does not."""
    with pytest.raises(CommandError, match="letters, digits"):
        run_issue_api_key("--tenant", "acme", "--agent", "front-desk" + ending, "--create")
    assert not Agent.objects.exists()


def test_issue_api_key_refuses_missing_tenant_or_agent_without_create():
    with pytest.raises(CommandError, match="No tenant"):
        run_issue_api_key("--tenant", "nobody", "--agent", "x")
    TenantFactory(slug="acme")
    with pytest.raises(CommandError, match="No agent"):
        run_issue_api_key("--tenant", "acme", "--agent", "x")
    with pytest.raises(CommandError):
        run_issue_api_key("--tenant", "Not A Slug!", "--agent", "x", "--create")
    assert not Agent.objects.exists()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer x",
        "Basic dXNlcjpwYXNz",
        "Bearer mlk_live_zzz",
        "Token {key}",
        "Bearer {key}x",
        "Bearer {wrong_secret}",
        "Bearer " + "a" * 10_000,
    ],
)
def test_missing_or_bad_keys_get_the_same_401(api_key, header):
    client = AgentClient(api_key)
    if header is None:
        client.client.credentials()
    else:
        key_id = api_key.split("_")[2]
        wrong = f"mlk_live_{key_id}_{'A' * 43}"
        client.client.credentials(HTTP_AUTHORIZATION=header.format(key=api_key, wrong_secret=wrong))

    response = client.post(URL, {"events": [event()]})

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == "application/problem+json"
    assert stored_count() == 0


def test_revoked_expired_and_disabled_keys_are_refused_on_the_next_request(api_key, agent):
    client = AgentClient(api_key)
    assert client.post(URL, {"events": [event("before-1")]}).status_code == 200
    assert client.post(URL, {"events": [event("before-2")]}).status_code == 200
    refused_body = None

    for change in (
        lambda k: APIKey.objects.filter(pk=k.pk).update(revoked_at=timezone.now()),
        lambda k: APIKey.objects.filter(pk=k.pk).update(
            revoked_at=None, expires_at=timezone.now() + timedelta(microseconds=1)
        ),
        lambda k: Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.DISABLED),
        lambda k: Tenant.objects.filter(pk=agent.tenant_id).update(status=Tenant.Status.SUSPENDED),
    ):
        key = APIKey.objects.get(agent=agent)
        APIKey.objects.filter(pk=key.pk).update(revoked_at=None, expires_at=None)
        Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.ACTIVE)
        Tenant.objects.filter(pk=agent.tenant_id).update(status=Tenant.Status.ACTIVE)
        change(key)
        response = client.post(URL, {"events": [event("after")]})
        assert response.status_code == 401
        refused_body = refused_body or response.content
        assert response.content == refused_body
    assert stored_count() == 2


def test_last_used_at_is_kept_without_a_write_per_request(api_key, agent):
    client = AgentClient(api_key)
    client.post(URL, {"events": [event("a")]})
    first = APIKey.objects.get(agent=agent).last_used_at
    assert first is not None

    client.post(URL, {"events": [event("b")]})
    assert APIKey.objects.get(agent=agent).last_used_at == first

    APIKey.objects.filter(agent=agent).update(last_used_at=timezone.now() - timedelta(hours=1))
    client.post(URL, {"events": [event("c")]})
    assert APIKey.objects.get(agent=agent).last_used_at > first


def test_requests_over_the_rate_get_429_with_retry_after_and_store_nothing(api_key, monkeypatch):
    monkeypatch.setattr(APIKeyRateThrottle, "THROTTLE_RATES", {"api_key": "3/min"})
    client = AgentClient(api_key)
    statuses = [client.post(URL, {"events": [event(f"e{i}")]}).status_code for i in range(3)]
    response = client.post(URL, {"events": [event("over")]})

    assert statuses == [200, 200, 200]
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert stored_count() == 3

    other = AgentClient(api_key_for(AgentFactory()))
    assert other.post(URL, {"events": [event("other")]}).status_code == 200


def test_find_key_loads_the_key_with_its_agent_and_tenant_as_the_orm_does():
    agent = AgentFactory(metadata={"team": "support", "tier": 2})
    api_key_for(agent)
    stored = APIKey.objects.select_related("agent", "tenant").get(agent=agent)

    found = find_key(stored.key_id)

    for model_field, loaded, expected in (
        (APIKey, found, stored),
        (Agent, found.agent, stored.agent),
        (Tenant, found.tenant, stored.tenant),
    ):
        for field in model_field._meta.concrete_fields:
            assert getattr(loaded, field.attname) == getattr(expected, field.attname), field.name
    assert found.agent.metadata == {"team": "support", "tier": 2}
    assert found.tenant_id == found.tenant.pk and found.agent_id == found.agent.pk
    assert find_key("0" * 12) is None
