import pytest
from django.conf import settings

from tests import livekit_samples as samples
from tests.factories import TenantFactory
from usage import tasks
from usage.models import AgentRollup, UsageRollup


@pytest.mark.slow
def test_verify_rollups_runs_on_a_real_worker_and_finds_drift_only_when_there_is_some(
    celery_worker, agent_client, tenant
):
    sample = samples.load("realtime_openai_gpt_realtime")
    agent_client.post(
        "/api/v1/livekit/metrics", {"session_id": "s", "metrics": samples.shifted_metrics(sample)}
    )

    assert tasks.verify_rollups.delay(tenant.pk).get(timeout=30) == []

    # Each rollup table is checked against the events on its own: first break only the per-agent rows…
    AgentRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").update(quantity=2)
    drift = tasks.verify_rollups.delay(tenant.pk).get(timeout=30)
    tampered = AgentRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").count()
    assert len(drift) == tampered >= 1
    assert {(d["rollup"], d["session_id"], d["rollup_quantity"]) for d in drift} == {
        ("usage_agentrollup", None, "2.000000")
    }

    # …then the per-session ones too: one entry per tampered row (a session straddling an hour has two)
    UsageRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").update(quantity=1)
    drift = tasks.verify_rollups.delay(tenant.pk).get(timeout=30)
    tampered += UsageRollup.objects.filter(tenant=tenant, meter="llm_output_audio_tokens").count()
    assert len(drift) == tampered
    assert {(d["rollup"], d["meter"], d["rollup_quantity"]) for d in drift} == {
        ("usage_agentrollup", "llm_output_audio_tokens", "2.000000"),
        ("usage_usagerollup", "llm_output_audio_tokens", "1.000000"),
    }


@pytest.mark.django_db
def test_beat_queues_a_rollup_check_for_every_tenant_daily(tenant, monkeypatch):
    other = TenantFactory()
    queued = []
    monkeypatch.setattr(tasks.verify_rollups, "delay", queued.append)

    assert tasks.verify_all_rollups() == 2 and queued == [tenant.pk, other.pk]
    entry = next(
        e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == tasks.verify_all_rollups.name
    )
    assert entry["schedule"] == 24 * 60 * 60
