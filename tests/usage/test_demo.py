import pytest
from django.core.management import call_command

from tenants.models import Agent, APIKey, Membership
from usage.models import UsageEvent
from usage.rollups import rollup_drift


@pytest.mark.django_db
def test_demo_data_is_a_month_of_replayed_usage_loaded_once(capsys):
    call_command("load_demo")
    first = capsys.readouterr().out
    tenant = Membership.objects.get(user__username="demo").tenant
    events = UsageEvent.objects.for_tenant(tenant)
    days = {e.timestamp.date() for e in events.only("timestamp")}

    assert Agent.objects.for_tenant(tenant).count() == 2 and APIKey.objects.for_tenant(tenant).count() == 2
    assert first.count("mlk_live_") == 2 and "demo / meterline-demo" in first
    assert len(days) >= 25 and events.count() > 10_000
    assert rollup_drift(tenant.pk) == []

    call_command("load_demo")
    assert "mlk_live_" not in capsys.readouterr().out
    assert UsageEvent.objects.for_tenant(tenant).count() == events.count()
