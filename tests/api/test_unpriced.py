"""Unpriced usage is reported by the ingest response that stored it (issue 17 part 2, DESIGN §15).

The plan here prices gpt-4o-mini text tokens per unit, Deepgram audio, Cartesia characters and marks up
gpt-4o-transcribe at cost (cost-plus, which needs a provider rate)."""

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import PlanVersion, Price, ProviderRate
from tests.billing.builders import make_plan, subscribe
from tests.livekit_samples import load, shifted_metrics
from tests.usage.builders import event, iso, recent
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"
M = Decimal(1_000_000)


@pytest.fixture
def plan(tenant):
    plan = make_plan()
    Price.objects.create(
        version=plan.versions.get(),
        meter_id="stt_input_tokens",
        provider="api.openai.com",
        model_pattern="gpt-4o-transcribe",
        price_model="cost_plus",
        markup=Decimal("0.2"),
    )
    subscribe(tenant, plan)
    return plan


def unpriced(response) -> list[dict]:
    assert response.status_code == 200, response.content
    return response.json().get("unpriced", [])


def test_priced_usage_reports_nothing(agent_client, plan):
    response = agent_client.post(URL, {"events": [event("a"), event("b")]})
    assert response.json()["accepted"] == 2
    assert "unpriced" not in response.json()


def test_each_unpriced_group_is_reported_with_its_event_count_and_reason(agent_client, plan):
    batch = [
        event("priced"),
        # no provider and model, as LiveKit before 1.2.12 reports: the gpt-4o-mini* prices cannot match
        event("legacy-1", provider="", model=""),
        event("legacy-2", provider="", model="", usage={"llm_input_text_tokens": "7"}),
        # a model the plan has no price for
        event("other", model="gpt-4.1", usage={"llm_output_text_tokens": 3}),
        # cost-plus without a provider rate: no cost to mark up
        event("stt", model="gpt-4o-transcribe", usage={"stt_input_tokens": 40}),
    ]
    assert unpriced(agent_client.post(URL, {"events": batch})) == [
        {"meter": "llm_input_text_tokens", "provider": "", "model": "", "events": 2, "reason": "no_price"},
        {"meter": "llm_output_text_tokens", "provider": "", "model": "", "events": 1, "reason": "no_price"},
        {
            "meter": "llm_output_text_tokens",
            "provider": "api.openai.com",
            "model": "gpt-4.1",
            "events": 1,
            "reason": "no_price",
        },
        {
            "meter": "stt_input_tokens",
            "provider": "api.openai.com",
            "model": "gpt-4o-transcribe",
            "events": 1,
            "reason": "no_provider_rate",
        },
    ]
    assert UsageEvent.objects.count() == 5  # reported, and stored: usage is a fact

    # a resend stores nothing new, so it reports nothing
    again = agent_client.post(URL, {"events": batch}).json()
    assert again["accepted"] == 0 and again["duplicates"] == 5 and "unpriced" not in again

    # once the provider rate exists, the cost-plus usage is priced
    ProviderRate.objects.create(
        provider="api.openai.com",
        model_pattern="gpt-4o-transcribe",
        meter_id="stt_input_tokens",
        cost_per_unit=Decimal(6),
        unit_size=M,
        effective_from=date(2026, 1, 1),
    )
    stt = event("stt-2", model="gpt-4o-transcribe", usage={"stt_input_tokens": 40})
    assert unpriced(agent_client.post(URL, {"events": [stt]})) == []


def test_usage_on_a_day_without_a_plan_is_unpriced(agent_client, tenant):
    assert unpriced(agent_client.post(URL, {"events": [event("a")]})) == [
        {
            "meter": meter,
            "provider": "api.openai.com",
            "model": "gpt-4o-mini",
            "events": 1,
            "reason": "no_plan",
        }
        for meter in ("llm_input_text_tokens", "llm_output_text_tokens")
    ]


def test_the_plan_version_in_force_on_each_events_day_decides(agent_client, tenant, plan):
    # a new version from today prices no gpt-4o-mini output: yesterday's event is priced, today's is not
    today = datetime.now(UTC).date()
    newer = PlanVersion.objects.create(plan=plan, version=2, effective_from=today)
    Price.objects.create(
        version=newer,
        meter_id="llm_input_text_tokens",
        model_pattern="gpt-4o-mini*",
        unit_amount=1,
        unit_size=M,
    )
    yesterday = iso(datetime.combine(today, datetime.min.time(), tzinfo=UTC) - timedelta(hours=1))
    now = recent(1)
    if now < iso(datetime.combine(today, datetime.min.time(), tzinfo=UTC)):
        pytest.skip("run within a minute of midnight UTC")
    response = agent_client.post(
        URL, {"events": [event("old", timestamp=yesterday), event("new", timestamp=now)]}
    )
    assert unpriced(response) == [
        {
            "meter": "llm_output_text_tokens",
            "provider": "api.openai.com",
            "model": "gpt-4o-mini",
            "events": 1,
            "reason": "no_price",
        }
    ]


@pytest.mark.parametrize("path", ["/api/v1/livekit/metrics"])
def test_livekit_metrics_without_model_metadata_are_reported(agent_client, plan, path):
    sample = load("pipeline_deepgram_openai_cartesia")
    legacy = [{k: v for k, v in m.items() if k != "metadata"} for m in shifted_metrics(sample)]
    report = unpriced(agent_client.post(path, {"session_id": "legacy-call", "metrics": legacy}))

    # independently: every stored event names no provider or model, and each meter it carries is reported
    # with the number of stored events that carry it (no price of this plan matches an empty model)
    stored = list(UsageEvent.objects.all())
    assert stored and all(e.provider == "" and e.model == "" for e in stored)
    carried = Counter(meter for e in stored for meter, q in e.usage.items() if Decimal(q))
    # Deepgram and Cartesia prices are scoped to their provider, gpt-4o-mini's to its model: none match ""
    priced_for_anyone = {
        p.meter_id for p in Price.objects.filter(version__plan=plan, provider="", model_pattern="")
    }
    expected = [
        {"meter": meter, "provider": "", "model": "", "events": count, "reason": "no_price"}
        for meter, count in sorted(carried.items())
        if meter not in priced_for_anyone
    ]
    assert report == expected and report

    # the same session with its metadata: the plan prices it, except what it has no price for
    with_metadata = shifted_metrics(sample)
    report = unpriced(agent_client.post(path, {"session_id": "call-2", "metrics": with_metadata}))
    assert all(entry["provider"] != "" for entry in report)


def test_the_read_api_and_the_portal_mark_every_row_with_unpriced_usage(agent_client, plan, tenant, client):
    batch = [
        event("priced", usage={"llm_input_text_tokens": 1_000_000}),
        event("legacy-1", provider="", model="", usage={"llm_input_text_tokens": 1200}),
        event(
            "legacy-2",
            provider="",
            model="",
            usage={"llm_input_text_tokens": 7, "llm_output_text_tokens": 40},
        ),
    ]
    assert agent_client.post(URL, {"events": batch}).status_code == 200
    # independently: the plan's gpt-4o-mini* input price is $0.30 per 1M tokens; "" models match no price
    priced_cost = Decimal(1_000_000) * Decimal("0.30") / M  # a whole number of cents: no rounding here

    by_model = agent_client.get("/api/v1/usage", group_by="model").json()
    rows = {row["group"]["model"]: row for row in by_model["results"]}
    assert rows["gpt-4o-mini"]["unpriced"] == {}
    assert Decimal(rows["gpt-4o-mini"]["cost"]) == priced_cost
    assert rows[""]["unpriced"] == {"llm_input_text_tokens": "1207", "llm_output_text_tokens": "40"}
    assert rows[""]["quantity"] == rows[""]["unpriced"] and Decimal(rows[""]["cost"]) == 0
    # grouped by session, the one row holds both: its cost is the priced part, the rest is marked
    (session_row,) = agent_client.get("/api/v1/usage", group_by="session").json()["results"]
    assert session_row["unpriced"] == {"llm_input_text_tokens": "1207", "llm_output_text_tokens": "40"}
    assert session_row["quantity"]["llm_input_text_tokens"] == "1001207"
    assert Decimal(session_row["cost"]) == priced_cost

    session = agent_client.get("/api/v1/sessions/call-1").json()
    assert session["unpriced"] is True and Decimal(session["cost"]) == priced_cost
    assert session["gaps"] == []  # events sent as plain events carry no LiveKit gaps
    assert {(u["meter"], u["model"], u["unpriced"]) for u in session["usage"]} == {
        ("llm_input_text_tokens", "gpt-4o-mini", False),
        ("llm_input_text_tokens", "", True),
        ("llm_output_text_tokens", "", True),
    }

    # the portal: the session page, the explorer and its CSV
    from tests.factories import MembershipFactory

    client.force_login(MembershipFactory(tenant=tenant).user)
    page = client.get("/sessions/call-1/").content.decode()
    assert page.count('data-testid="unpriced"') == 2 and 'data-testid="unpriced-notice"' in page
    explorer = client.get("/usage/?group_by=model").content.decode()
    assert explorer.count('data-testid="unpriced"') == 1
    exported = client.get("/usage.csv?group_by=model")
    lines = b"".join(exported.streaming_content).decode().splitlines()
    assert lines[0].endswith(",unpriced")
    assert any(line.endswith(",llm_input_text_tokens=1207;llm_output_text_tokens=40") for line in lines[1:])


def test_the_dashboard_and_the_staff_admin_list_the_periods_unpriced_usage(
    agent_client, plan, tenant, client
):
    from billing import invoicing
    from tests.conftest import AgentClient
    from tests.factories import AgentFactory, MembershipFactory, TenantFactory, UserFactory, api_key_for

    legacy = event("legacy", provider="", model="", usage={"llm_input_text_tokens": 1234567})
    assert agent_client.post(URL, {"events": [event("priced"), legacy]}).status_code == 200
    # another tenant, on the same plan, whose usage is all priced: it is not listed
    other = TenantFactory(name="Fully Priced Ltd")
    subscribe(other, plan)
    AgentClient(api_key_for(AgentFactory(tenant=other))).post(URL, {"events": [event("p")]})

    member = MembershipFactory(tenant=tenant).user
    client.force_login(member)
    page = client.get("/").content.decode()
    panel = page[page.index('data-testid="unpriced-panel"') :]
    panel = panel[: panel.index("</div>")]
    assert "llm_input_text_tokens" in panel and "1,234,567" in panel and "no price in your plan" in panel
    assert 'data-testid="unpriced-fix"' in panel and "gpt-4o-mini" not in panel

    for each in (tenant, other):
        start, _ = invoicing.current_period(each)
        invoicing.generate_invoice(each.pk, start)
    url = "/admin/billing/invoice/unpriced/"
    assert client.get(url).status_code == 302  # tenant users are not staff: to the admin login
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    admin_page = client.get(url).content.decode()
    table = admin_page[admin_page.index('id="unpriced-usage"') :]
    assert tenant.name in table and "Fully Priced Ltd" not in table
    assert "llm_input_text_tokens" in table and "1234567" in table and "no_price" in table


def test_a_sessions_default_models_price_usage_that_names_none(agent_client, plan, tenant):
    legacy = [
        event("l-1", provider="", model="", usage={"llm_input_text_tokens": 100}),
        event("l-2", provider="", model="", usage={"stt_audio_seconds": "2.5"}),
    ]
    assert {u["meter"] for u in unpriced(agent_client.post(URL, {"events": legacy}))} == {
        "llm_input_text_tokens",
        "stt_audio_seconds",
    }
    llm = {"provider": "api.openai.com", "model": "gpt-4o-mini"}
    put = agent_client.put("/api/v1/sessions/call-1", {"default_models": {"llm": llm}})
    assert put.status_code == 200 and put.json()["default_models"] == {"llm": llm}

    later = [
        event("l-3", provider="", model="", usage={"llm_input_text_tokens": 100}),
        event("l-4", provider="", model="", usage={"stt_audio_seconds": "2.5"}),  # no stt default: as sent
        event("named", provider="api.openai.com", model="gpt-4.1", usage={"llm_output_text_tokens": 1}),
    ]
    report = unpriced(agent_client.post(URL, {"events": later}))
    assert [(u["meter"], u["provider"], u["model"]) for u in report] == [
        ("llm_output_text_tokens", "api.openai.com", "gpt-4.1"),  # named models are never replaced
        ("stt_audio_seconds", "", ""),
    ]
    stored = {e.event_id: (e.provider, e.model) for e in UsageEvent.objects.all()}
    assert stored["l-3"] == ("api.openai.com", "gpt-4o-mini")
    assert stored["l-1"] == ("", "")  # events stored before keep what they were stored with
    # a resend of the filled event is a duplicate, not a conflict
    again = agent_client.post(URL, {"events": later[:1]}).json()
    assert (again["accepted"], again["duplicates"], again["conflicts"]) == (0, 1, 0)


def test_livekit_metrics_without_metadata_are_priced_like_the_originals_once_defaults_are_set(
    agent_client, plan, tenant
):
    from tests.usage.builders import totals

    sample = load("pipeline_deepgram_openai_cartesia")
    originals = shifted_metrics(sample)
    names = {}  # kind → the (provider, model) the capture's metadata names, read from the capture here
    for metric in originals:
        kind = {"llm_metrics": "llm", "stt_metrics": "stt", "tts_metrics": "tts"}.get(metric["type"])
        if kind and metric.get("metadata"):
            names[kind] = {
                "provider": metric["metadata"]["model_provider"],
                "model": metric["metadata"]["model_name"],
            }
    assert set(names) == {"llm", "stt", "tts"}
    assert agent_client.put("/api/v1/sessions/legacy", {"default_models": names}).status_code == 201
    stripped = [{k: v for k, v in m.items() if k != "metadata"} for m in originals]
    legacy_report = unpriced(
        agent_client.post("/api/v1/livekit/metrics", {"session_id": "legacy", "metrics": stripped})
    )
    modern_report = unpriced(
        agent_client.post("/api/v1/livekit/metrics", {"session_id": "modern", "metrics": originals})
    )
    assert legacy_report == modern_report
    assert totals(tenant, session_id="legacy") == totals(tenant, session_id="modern")


@pytest.mark.parametrize(
    "bad",
    [
        "gpt-4o-mini",
        ["llm"],
        {"vision": {"provider": "x", "model": "y"}},
        {"llm": {"provider": "api.openai.com"}},
        {"llm": {"provider": "api.openai.com", "model": "gpt-4o-mini", "extra": 1}},
        {"llm": {"provider": "", "model": ""}},
        {"llm": {"provider": "api.openai.com", "model": "gpt\n4o"}},
        {"llm": {"provider": 7, "model": "gpt-4o-mini"}},
        {"llm": {"provider": "a" * 129, "model": "gpt-4o-mini"}},
        {"stt": None},
    ],
)
def test_bad_default_models_are_refused_naming_the_field_and_change_nothing(agent_client, bad):
    response = agent_client.put("/api/v1/sessions/call-9", {"default_models": bad})
    assert response.status_code == 400, response.content
    assert "default_models" in response.content.decode()
    assert agent_client.get("/api/v1/sessions/call-9").status_code == 404  # not even created


def test_a_sessions_token_gaps_are_shown_per_model_in_the_api_and_the_portal(
    agent_client, plan, tenant, client
):
    metrics = shifted_metrics(load("realtime_gemini_live"))
    realtime = [m for m in metrics if m["type"] == "realtime_model_metrics" and m["input_tokens"]]
    # two responses whose input details fall 7 and 5 tokens short of their input totals
    for metric, short in zip(realtime, (7, 5), strict=False):
        metric["input_token_details"] = {
            **metric["input_token_details"],
            "text_tokens": metric["input_token_details"]["text_tokens"] - short,
        }
    # and an agent's own metadata that merely looks like a gap is not one
    agent_client.post(URL, {"events": [event("own", session_id="gemini", metadata={"gap_x": "lots"})]})
    response = agent_client.post("/api/v1/livekit/metrics", {"session_id": "gemini", "metrics": metrics})
    assert response.status_code == 200, response.content
    model = realtime[0]["metadata"]["model_name"]
    provider = realtime[0]["metadata"]["model_provider"]

    gaps = agent_client.get("/api/v1/sessions/gemini").json()["gaps"]
    assert gaps == [
        {
            "provider": provider,
            "model": model,
            "kind": "unclassified_input_tokens",
            "tokens": "12",
            "events": 2,
        }
    ]
    from tests.factories import MembershipFactory

    client.force_login(MembershipFactory(tenant=tenant).user)
    page = client.get("/sessions/gemini/").content.decode()
    section = page[page.index('data-testid="session-gaps"') :]
    assert "unclassified_input_tokens" in section and model in section
    # the usage explorer lists the range's gaps per model (the same figures), and a filter narrows them
    explorer = client.get("/usage/", {"group_by": "model"}).content.decode()
    section = explorer[explorer.index('data-testid="explorer-gaps"') :].split("</table>")[0]
    assert "unclassified_input_tokens" in section and model in section and ">12<" in section
    assert "gap_x" not in explorer and "lots" not in explorer
    other = client.get("/usage/", {"group_by": "model", "session": "no-such-session"}).content.decode()
    assert 'data-testid="explorer-gaps"' not in other


def test_the_gap_query_reads_only_events_that_carry_a_gap(tenant, agent):
    """The explorer's gaps use the partial index, never a scan of the tenant's events."""
    from django.db import connection

    from usage import gaps

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO usage_usageevent (tenant_id, agent_id, event_id, timestamp, session_id, provider, model, "
            "usage, metadata, source, received_at) SELECT %s, %s, 'bulk-' || n, now() - n * interval '1 second', "
            "'s', 'p', 'm', '{}', '{}', 'livekit_metrics', now() FROM generate_series(1, 5000) AS n",
            [tenant.pk, agent.pk],
        )
        cursor.execute("ANALYZE usage_usageevent")
        where = "e.tenant_id = %s AND e.timestamp >= now() - interval '1 day' AND " + gaps.GAP_EVENTS
        sql = "EXPLAIN SELECT 1 FROM usage_usageevent e WHERE " + where  # noqa: S608 - constant text
        cursor.execute(sql, [tenant.pk])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        # each monthly partition has its own copy of the index, attached to usageevent_gaps (usage.partitions)
        cursor.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'usageevent_gaps'::regclass"
        )
        copies = {row[0] for row in cursor.fetchall()}
    used = {line.split(" using ")[1].split()[0] for line in plan.splitlines() if " using " in line}
    assert used and used <= copies, plan


def test_the_gap_query_runs_serial_without_changing_its_callers_transaction(tenant, agent):
    """Its planner setting is for the one statement: inside a caller's transaction (this test's), the value
    the transaction had before is back afterwards, whether it was the server's default or the caller's own."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from usage import gaps

    def setting() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW max_parallel_workers_per_gather")
            return cursor.fetchone()[0]

    now = timezone.now()
    default = setting()
    assert default != "0"  # else this test could not tell
    assert gaps.range_gaps(tenant.pk, now - timedelta(days=1), now) == []
    assert setting() == default
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 7")
    gaps.range_gaps(tenant.pk, now - timedelta(days=1), now, {"agent": agent.pk})
    assert setting() == "7"


@pytest.mark.parametrize(
    ("provider", "model", "tokens", "flagged"),
    [
        (
            "api.openai.com",
            "gpt-realtime",
            20 * 130,
            False,
        ),  # 130 s of audio in a 60 s call: within 2× + 10 s
        ("api.openai.com", "gpt-realtime", 20 * 131, True),
        ("Gemini", "gemini-2.5-flash-native-audio", 32 * 200, True),
        ("Deepgram", "aura-2", 10**6, False),  # no known rate: no verdict
    ],
)
def test_audio_tokens_far_beyond_the_sessions_length_are_flagged(
    agent_client, plan, tenant, client, provider, model, tokens, flagged
):
    from tests.factories import MembershipFactory

    start = recent()
    started = datetime.fromisoformat(start.replace("Z", "+00:00")) - timedelta(seconds=60)
    agent_client.put("/api/v1/sessions/talk", {"started_at": iso(started), "ended_at": start})
    usage = {"llm_output_audio_tokens": tokens}
    agent_client.post(
        URL, {"events": [event("a", session_id="talk", provider=provider, model=model, usage=usage)]}
    )
    found = agent_client.get("/api/v1/sessions/talk").json()["audio_check"]
    if not flagged:
        assert found == []
        return
    rate = 20 if "openai" in provider else 32
    assert found == [
        {
            "provider": provider,
            "model": model,
            "tokens": str(tokens),
            "tokens_per_second": str(rate),
            "audio_seconds": str(Decimal(tokens) / rate),
            "session_seconds": "60",
        }
    ]
    client.force_login(MembershipFactory(tenant=tenant).user)
    page = client.get("/sessions/talk/").content.decode()
    assert 'data-testid="audio-check"' in page and model in page
