"""Staff retract an event from the usage admin, with a required reason, through the service agents use
(decision 021); who and why are kept on the event and in the admin's log."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse

from notifications.models import Event
from tests.factories import UserFactory
from tests.usage.builders import iso, totals
from usage import corrections
from usage.models import UsageEvent
from usage.rollups import rollup_drift

pytestmark = pytest.mark.django_db


def sent(agent_client, *chars: int) -> list[UsageEvent]:
    at = datetime.now(UTC) - timedelta(minutes=20)
    events = [
        {
            "id": f"e{i}",
            "timestamp": iso(at),
            "session_id": "call-1",
            "provider": "Cartesia",
            "model": "sonic-3",
            "usage": {"tts_characters": n},
        }
        for i, n in enumerate(chars)
    ]
    assert agent_client.post("/api/v1/events", {"events": events}).status_code == 200
    return list(UsageEvent.objects.order_by("event_id"))


def staff(*permissions: str):
    user = UserFactory(is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_staff_retract_an_event_with_a_reason(client, agent_client, tenant):
    first, second = sent(agent_client, 100, 20)
    user = staff("view_usageevent", "retract_usageevent")
    client.force_login(user)
    page = client.get(reverse("admin:usage_usageevent_change", args=[first.pk]))
    retract_url = reverse("admin:usage_usageevent_retract", args=[first.pk])
    assert retract_url in page.content.decode()

    refused = client.post(retract_url, {"reason": "   "})
    assert refused.status_code == 200 and refused.context["form"].errors["reason"]
    assert not UsageEvent.objects.get(pk=first.pk).is_retracted

    done = client.post(retract_url, {"reason": "duplicate report, ticket 4411"}, follow=True)
    assert done.status_code == 200 and "no longer counts" in done.content.decode()
    first.refresh_from_db()
    assert (first.retracted_by, first.retracted_by_user, first.retraction_reason) == (
        "staff",
        user,
        "duplicate report, ticket 4411",
    )
    assert totals(tenant) == {("tts_characters", "Cartesia", "sonic-3"): Decimal(20)}
    assert rollup_drift(tenant.pk) == []
    log = LogEntry.objects.get(object_id=str(first.pk))
    assert log.user == user and "ticket 4411" in log.get_change_message()
    (event,) = Event.objects.filter(type=corrections.USAGE_CORRECTED)
    assert event.data["events"] == [
        {
            "event_id": "e0",
            "retracted_by": "staff",
            "replaced_by": None,
            "reason": "duplicate report, ticket 4411",
        }
    ]
    # the page no longer offers it, and a second retraction is refused with the reason why
    page = client.get(reverse("admin:usage_usageevent_change", args=[first.pk])).content.decode()
    assert retract_url not in page
    again = client.post(retract_url, {"reason": "again"})
    assert "already retracted by platform staff" in again.content.decode()
    # the agent cannot retract it again either: a staff retraction is not the agent's
    assert agent_client.post("/api/v1/events/e0/retract", {}).status_code == 409
    assert (
        second.event_id
        in client.get(reverse("admin:usage_usageevent_changelist") + "?retracted=no").content.decode()
    )


def test_only_staff_with_the_permission_retract(client, agent_client):
    (event,) = sent(agent_client, 5)
    client.force_login(staff("view_usageevent"))
    url = reverse("admin:usage_usageevent_retract", args=[event.pk])
    assert client.post(url, {"reason": "why not"}).status_code == 403
    assert url not in client.get(reverse("admin:usage_usageevent_change", args=[event.pk])).content.decode()
    assert not UsageEvent.objects.get(pk=event.pk).is_retracted
