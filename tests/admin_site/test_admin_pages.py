"""Every admin page of every registered model renders for a superuser, with data present."""

import pytest
from django.contrib import admin
from django.urls import reverse

from tests import livekit_samples as samples
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_every_admin_changelist_and_change_form_renders(client, agent, agent_client):
    sample = samples.load("realtime_openai_gpt_realtime")
    agent_client.post(
        "/api/v1/livekit/metrics", {"session_id": "s", "metrics": samples.shifted_metrics(sample)}
    )
    MembershipFactory(tenant=agent.tenant)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        changelist = client.get(reverse("admin:{}_{}_changelist".format(*info)))
        assert changelist.status_code == 200, info
        obj = model._default_manager.first()
        if obj is not None:
            assert (
                client.get(reverse("admin:{}_{}_change".format(*info), args=[obj.pk])).status_code == 200
            ), info
        if model_admin.has_add_permission(changelist.wsgi_request):
            assert client.get(reverse("admin:{}_{}_add".format(*info))).status_code == 200, info


def test_issuing_a_key_in_admin_shows_it_once_and_stores_only_its_hash(client, agent):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(
        reverse("admin:tenants_agent_changelist"),
        {"action": "issue_api_key", "_selected_action": [agent.pk]},
        follow=True,
    )
    message = next(str(m) for m in response.context["messages"])
    key = message.split(": ")[1].split(" ")[0]
    assert key.startswith("mlk_live_")
    page = client.get(reverse("admin:tenants_apikey_changelist")).content.decode()
    assert key not in page and key.split("_")[2] in page
