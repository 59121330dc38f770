"""Demo data for ``make run``: a tenant, two agents with keys, a user, and a month of realistic usage.

The usage replays the LiveKit sessions captured from the real ``livekit-agents`` package (tests/data/livekit),
shifted in time across the last 30 days, through the same validation and storage as the API.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from tenants.keys import issue_key
from tenants.models import Agent, Membership, Tenant
from usage import ingest, livekit, validation
from usage.models import Session, UsageEvent

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "livekit"
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "meterline-demo"  # noqa: S105 - a published demo credential for the local dev server only
DEMO_ADMIN = "admin"
DEMO_ADMIN_PASSWORD = "meterline-admin"  # noqa: S105 - same: local dev server only
AGENTS = {
    "dental-receptionist": ["pipeline_deepgram_openai_cartesia"],
    "skyway-voice": ["realtime_openai_gpt_realtime", "realtime_gemini_live"],
}

DEMO_TENANT_SLUG = "acme-voice"
DEMO_TENANT = {
    "name": "Acme Voice Co.",
    "currency": "USD",
    "timezone": "America/New_York",
    "billing_email": "billing@acme-voice.example",
}


def _load_sample(name: str) -> dict:
    return json.loads((SAMPLES_DIR / f"{name}.json").read_text())


def load_demo(days: int = 30, seed: int = 7, now: datetime | None = None) -> dict:
    """Create the demo tenant and its usage once; later calls report what exists and change nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        tenant, _ = Tenant.objects.get_or_create(slug=DEMO_TENANT_SLUG, defaults=DEMO_TENANT)
        user_model = get_user_model()
        user = user_model.objects.filter(username=DEMO_USERNAME).first()
        if user is None:
            user = user_model.objects.create_user(DEMO_USERNAME, "demo@acme-voice.example", DEMO_PASSWORD)
        Membership.objects.get_or_create(user=user, tenant=tenant, defaults={"role": Membership.Role.OWNER})
        if not user_model.objects.filter(username=DEMO_ADMIN).exists():
            user_model.objects.create_superuser(DEMO_ADMIN, "admin@meterline.example", DEMO_ADMIN_PASSWORD)
        keys = {}
        for name in AGENTS:
            agent, agent_created = Agent.objects.get_or_create(tenant=tenant, name=name)
            if agent_created:
                keys[name] = issue_key(agent, label="demo").plaintext
    summary = {
        "tenant": tenant,
        "keys": keys,
        "username": DEMO_USERNAME,
        "password": DEMO_PASSWORD,
        "admin": DEMO_ADMIN,
        "admin_password": DEMO_ADMIN_PASSWORD,
        "events": 0,
    }
    if UsageEvent.objects.for_tenant(tenant).exists():
        summary["events"] = UsageEvent.objects.for_tenant(tenant).count()
        return summary
    rng = random.Random(seed)
    samples = {name: _load_sample(name) for names in AGENTS.values() for name in names}
    meter_codes = validation.active_meter_codes()
    for day in range(days, -1, -1):
        day_start = (now - timedelta(days=day)).replace(hour=0, minute=0, second=0, microsecond=0)
        weekday_factor = 0.45 if day_start.weekday() >= 5 else 1.0
        for agent_name, sample_names in AGENTS.items():
            agent = Agent.objects.get(tenant=tenant, name=agent_name)
            for n in range(int(rng.randint(10, 22) * weekday_factor)):
                sample = samples[rng.choice(sample_names)]
                started = day_start + timedelta(hours=rng.uniform(8, 20))
                length = sample["session"]["ended_at"] - sample["session"]["started_at"]
                if started.timestamp() + length > now.timestamp() - 60:
                    continue
                offset = started.timestamp() - sample["session"]["started_at"]
                session_id = f"demo-{agent_name}-{started:%Y%m%d}-{n:03d}"
                metrics = [dict(m, timestamp=m["timestamp"] + offset) for m in sample["metrics"]]
                batch = livekit.validate_livekit_metrics(
                    {"session_id": session_id, "metrics": metrics}, meter_codes, now
                )
                result = ingest.store_events(tenant, agent, batch, session_mode="metrics")
                summary["events"] += result.accepted
                Session.objects.for_tenant(tenant).filter(session_id=session_id).update(
                    started_at=started,
                    ended_at=started + timedelta(seconds=length),
                    end_user_id=f"caller-{rng.randint(1000, 9999)}",
                    conversation_type="inbound_call",
                )
    return summary
