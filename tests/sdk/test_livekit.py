"""``meterline.livekit.attach`` driven by the real livekit-agents package (from PyPI), replaying the captured
sessions in tests/data/livekit.

What is real: ``AgentSession`` (started without a room: no media, no models), the metrics objects (the
``livekit.agents.metrics`` classes, validated from the captured dumps with timestamps shifted to now), the
path they take (each goes through the session's real ``AgentActivity._on_metrics_collected``, which feeds
LiveKit's ``ModelUsageCollector`` and emits ``metrics_collected`` and ``session_usage_updated`` exactly as
when a plugin reports), the ``close`` event (a real ``session.aclose()``), and the Meterline server
(live_server). What is simulated: the plugins themselves (their metrics are replayed, not produced by calls
to Deepgram/OpenAI/Cartesia), and, for the other 1.x releases, the session object (a LiveKit
``rtc.EventEmitter`` that emits only what those releases emit, since this environment has one release).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import meterline
import pytest
from django.db import connection
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.metrics import AgentMetrics, ModelUsageCollector
from livekit.agents.voice.events import (
    CloseEvent,
    CloseReason,
    MetricsCollectedEvent,
    SessionUsageUpdatedEvent,
)
from meterline.livekit import attach
from pydantic import TypeAdapter

from tests import livekit_samples as samples
from tests.sdk.conftest import livekit_expected_totals, per_meter
from tests.usage.builders import totals
from usage import meters as meter_catalogue
from usage.models import Session, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
EXAMPLE = Path(__file__).resolve().parents[2] / "sdk" / "python" / "examples" / "livekit_agent.py"
METRICS = TypeAdapter(AgentMetrics)


def metric_objects(name: str) -> list:
    """The captured session's metrics as real livekit-agents objects, timestamps shifted to end near now."""
    return [METRICS.validate_python(m) for m in samples.shifted_metrics(samples.load(name))]


async def started_session() -> AgentSession:
    session = AgentSession()
    await session.start(agent=Agent(instructions="Replay of a captured session."))
    return session


def replay(session: AgentSession, metrics: list) -> float:
    """Report each metric the way a plugin does (through the session's activity); returns the slowest call."""
    slowest = 0.0
    for metric in metrics:
        started = time.perf_counter()
        session._activity._on_metrics_collected(metric)
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def usage_dicts(session) -> list[dict]:
    return [u.model_dump() for u in session.usage.model_usage]


async def bill_replayed_call(session: AgentSession, billing, name: str) -> list[dict]:
    """Replay a captured call into a billed session, close it and wait until everything is delivered;
    returns LiveKit's own per-model usage, the figure Meterline's totals must equal."""
    replay(session, metric_objects(name))
    await session.aclose()
    assert await billing.aflush(timeout=10)
    return usage_dicts(session)


async def wait_for_stored_events(session_id: str, within: float = 15.0) -> int:
    """Poll the database (from a worker thread: the ORM is synchronous) until the session has events."""

    def count_events() -> int:
        try:
            return UsageEvent.objects.filter(session_id=session_id).count()
        finally:
            connection.close()  # this worker thread's own connection; left open it would outlive the test DB

    deadline = time.monotonic() + within
    while True:
        count = await asyncio.to_thread(count_events)
        if count or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


class LagProbe:
    """Measures how late a 10 ms timer fires on the event loop: proof the loop was never blocked."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - started - 0.01)

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()


@pytest.mark.parametrize("name", samples.SESSIONS)
def test_metrics_mode_forwards_each_request_and_ends_with_livekits_own_totals(
    server, make_client, tenant, name
):
    client = make_client(server, record=True)
    metrics = metric_objects(name)

    async def call():
        session = AgentSession()
        billing = attach(session, client, session_id=f"call-{name}", end_user_id="+15550142")
        await session.start(agent=Agent(instructions="Replay of a captured session."))
        with LagProbe() as probe:
            slowest = replay(session, metrics)
            # Near-real-time: usage reaches the server while the call is still running.
            during_call = await wait_for_stored_events(f"call-{name}")
            await session.aclose()  # emits "close": the end is reported and a flush requested
            delivered = await billing.aflush(timeout=10)
        return billing, usage_dicts(session), slowest, probe.worst, delivered, during_call

    billing, livekit_usage, _slowest, _lag, delivered, during_call = asyncio.run(call())
    assert delivered and client.pending() == 0 and during_call > 0
    # LiveKit's own collector, fed by the replay, agrees with the captured session's final usage ...
    assert livekit_usage == samples.final_model_usage(samples.load(name))
    # ... and Meterline's totals, built from the forwarded per-request metrics, agree with LiveKit's.
    assert totals(tenant, session_id=f"call-{name}") == livekit_expected_totals(livekit_usage)

    billable = [m for m in metrics if meter_catalogue.map_livekit_metric(m.model_dump())]
    assert UsageEvent.objects.filter(session_id=f"call-{name}").count() == len(
        [m for m in billable if meter_catalogue.map_livekit_metric(m.model_dump()).usage]
    )
    posted = [
        json.loads(body)["metrics"]
        for _, path, body, _ in client.recorder.calls
        if path == "/api/v1/livekit/metrics"
    ]
    assert posted and all(1 <= len(batch) <= 50 for batch in posted)  # small batches
    assert "/api/v1/livekit/usage" not in client.recorder.paths()  # never both
    assert billing.metrics_forwarded == len([m for m in metrics if m.type != "vad_metrics"])
    # Callbacks only enqueue; the loop never waits on billing: no request was ever sent from the thread that ran
    # the agent's event loop (a structural check: wall-clock bounds fail on loaded machines).
    assert threading.main_thread().ident not in client.recorder.threads

    session = Session.objects.get(session_id=f"call-{name}")
    assert session.livekit_report_mode == "metrics" and session.end_user_id == "+15550142"
    assert session.started_at and session.ended_at and session.ended_at >= session.started_at
    assert session.metadata["livekit_agents_version"]


@pytest.mark.parametrize("name", samples.SESSIONS)
def test_usage_mode_sends_only_livekits_per_model_usage_at_close(server, make_client, tenant, name):
    client = make_client(server, record=True)

    async def call():
        session = await started_session()
        billing = attach(session, client, session_id=f"usage-{name}", mode="usage")
        return await bill_replayed_call(session, billing, name)

    livekit_usage = asyncio.run(call())
    assert client.recorder.paths().count("/api/v1/livekit/usage") == 1
    assert "/api/v1/livekit/metrics" not in client.recorder.paths()
    assert totals(tenant, session_id=f"usage-{name}") == livekit_expected_totals(livekit_usage)
    assert Session.objects.get(session_id=f"usage-{name}").livekit_report_mode == "usage"


def test_billing_down_or_hung_never_blocks_the_agent_and_nothing_is_lost(
    server, black_hole_url, closed_port_url, make_client, tenant
):
    name = "pipeline_deepgram_openai_cartesia"
    # Accepts connections, never answers. The timeout is long enough that a client that waited on the network
    # would stall well above the bounds below, which leave room for a loaded machine.
    hung = make_client(black_hole_url, timeout=1.0, max_retries=0)
    refused = make_client(closed_port_url, max_retries=0)

    async def call(client, session_id):
        session = await started_session()
        billing = attach(session, client, session_id=session_id, end_user_id="caller-9")
        with LagProbe() as probe:
            slowest = replay(session, metric_objects(name))
            started = time.perf_counter()
            await session.aclose()
            close_time = time.perf_counter() - started
            delivered = await billing.aflush(timeout=0.2)
        return usage_dicts(session), slowest, probe.worst, close_time, delivered

    for client, session_id in ((hung, "hung-call"), (refused, "refused-call")):
        livekit_usage, slowest, lag, close_time, delivered = asyncio.run(call(client, session_id))
        # A client that waited on the network would stall ≥ 1 s (the timeout) per request.
        assert not delivered and slowest < 0.6 and lag < 0.9 and close_time < 3.0
        client.close(timeout=15)
        assert client.pending() > 0  # all of it spooled to disk
    assert UsageEvent.objects.count() == 0

    # The next start with the same key and spool directory delivers both calls, exactly once.
    up = make_client(server)
    assert up.flush().pending == 0
    expected = livekit_expected_totals(livekit_usage)
    assert totals(tenant, session_id="hung-call") == expected
    assert totals(tenant, session_id="refused-call") == expected
    assert up.flush().delivered == 0
    assert set(Session.objects.values_list("end_user_id", flat=True)) == {"caller-9"}


def test_a_refused_metric_is_set_aside_and_the_rest_of_its_batch_still_lands(
    server, make_client, tenant, spool_dir
):
    name = "pipeline_deepgram_openai_cartesia"
    metrics = metric_objects(name)
    llm = next(i for i, m in enumerate(metrics) if m.type == "llm_metrics")
    stale = metrics[llm].model_copy(
        update={"timestamp": time.time() - 40 * 86400}
    )  # outside the 35-day window
    metrics[llm] = stale
    client = make_client(server)

    async def call():
        session = await started_session()
        billing = attach(session, client, session_id="partly-stale")
        replay(session, metrics)
        await session.aclose()
        return await billing.aflush(timeout=10), usage_dicts(session)

    delivered, livekit_usage = asyncio.run(call())
    assert delivered
    expected = livekit_expected_totals(livekit_usage)
    for meter, quantity in meter_catalogue.map_livekit_metric(stale.model_dump()).usage.items():
        key = (meter, "api.openai.com", "gpt-4o-mini")
        expected[key] = (expected[key] - quantity).normalize()
    assert totals(tenant, session_id="partly-stale") == {k: v for k, v in expected.items() if v}
    rejected = list((spool_dir / client.key_id / "rejected").iterdir())
    assert len(rejected) == 1 and '"status":422' in rejected[0].read_text()


class Pre15Session(rtc.EventEmitter):
    """What livekit-agents 1.0–1.4 offers: ``metrics_collected`` and ``close``, no per-model usage."""


class FutureSession(rtc.EventEmitter):
    """A release that has dropped ``metrics_collected``: only ``session_usage_updated`` and ``AgentSession.usage``."""

    def __init__(self) -> None:
        super().__init__()
        self._collector = ModelUsageCollector()

    @property
    def usage(self):
        from livekit.agents.metrics import AgentSessionUsage

        return AgentSessionUsage(model_usage=self._collector.flatten())

    def report(self, metric) -> None:
        self._collector.collect(metric)
        self.emit("session_usage_updated", SessionUsageUpdatedEvent(usage=self.usage))


def test_releases_before_1_5_are_billed_per_request_even_when_usage_mode_is_asked(
    server, make_client, tenant, caplog
):
    # The 1.2.18 capture of the pipeline session: no metadata (so no provider/model), no per-model usage.
    legacy = [
        METRICS.validate_python(m)
        for m in samples.shifted_metrics(samples.load("pipeline_deepgram_openai_cartesia_v1.2.18"))
    ]
    session = Pre15Session()
    client = make_client(server)
    with caplog.at_level(logging.WARNING, logger="meterline"):
        billing = attach(session, client, session_id="legacy-call", mode="usage")
    assert billing.mode == "metrics" and "needs ≥ 1.5" in caplog.text
    for metric in legacy:
        session.emit("metrics_collected", MetricsCollectedEvent(metrics=metric))
    session.emit("close", CloseEvent(reason=CloseReason.USER_INITIATED))
    assert billing.flush(timeout=10)
    modern = livekit_expected_totals(
        samples.final_model_usage(samples.load("pipeline_deepgram_openai_cartesia"))
    )
    assert per_meter(totals(tenant, session_id="legacy-call")) == per_meter(modern)
    assert Session.objects.get(session_id="legacy-call").livekit_report_mode == "metrics"


def test_a_release_without_metrics_collected_falls_back_to_one_usage_report(server, make_client, tenant):
    name = "realtime_openai_gpt_realtime"
    session = FutureSession()
    client = make_client(server, record=True)
    billing = attach(session, client, session_id="future-call")  # metrics mode: nothing per request arrives
    for metric in metric_objects(name):
        session.report(metric)
    session.emit("close", CloseEvent(reason=CloseReason.USER_INITIATED))
    assert billing.flush(timeout=10)
    assert "/api/v1/livekit/metrics" not in client.recorder.paths()
    assert client.recorder.paths().count("/api/v1/livekit/usage") == 1
    expected = livekit_expected_totals(samples.final_model_usage(samples.load(name)))
    assert totals(tenant, session_id="future-call") == expected
    assert Session.objects.get(session_id="future-call").livekit_report_mode == "usage"


def test_one_session_is_billed_one_way_only(server, make_client):
    client = make_client(server)

    async def call():
        session = await started_session()
        first = attach(session, client, session_id="once")
        assert attach(session, client, session_id="once") is first
        with pytest.raises(ValueError, match="already billed"):
            attach(session, client, session_id="once", mode="usage")
        await session.aclose()
        # After close a usage report would be refused by the server (409); attach never sends one.
        assert first.usage_reported is False

    asyncio.run(call())


def test_attach_refuses_what_it_could_never_deliver_up_front(server, make_client):
    client = make_client(server)
    session = Pre15Session()
    with pytest.raises(ValueError, match="session_id is required"):
        attach(session, client)  # outside a LiveKit job there is no job id to default to
    for bad in ("room/7", "x" * 129):
        with pytest.raises(ValueError):
            attach(session, client, session_id=bad)
    with pytest.raises(ValueError, match="mode"):
        attach(session, client, session_id="ok", mode="both")
    billing = attach(session, client, session_id="ok")
    with pytest.raises(TypeError, match="unknown session field"):
        billing.update_session(colour="blue")


def test_callbacks_never_raise_into_livekit_even_when_billing_breaks(server, make_client, caplog):
    client = make_client(server)

    async def call():
        session = await started_session()
        billing = attach(session, client, session_id="broken")

        def explode(*args):
            raise RuntimeError("billing bug")

        billing.sender.submit_metric = explode
        billing.sender.submit_session = explode
        with caplog.at_level(logging.ERROR):
            replay(session, metric_objects("realtime_gemini_live"))
            await session.aclose()
        return session

    asyncio.run(call())
    assert "the agent is unaffected" in caplog.text
    assert "failed to emit event" not in caplog.text  # LiveKit's emitter never saw an exception


def test_livekits_deprecation_warning_is_silenced_for_our_subscription_only(server, make_client, caplog):
    client = make_client(server)

    async def call():
        session = AgentSession()
        with caplog.at_level(logging.WARNING, logger="livekit.agents"):
            attach(session, client, session_id="quiet")
            assert "metrics_collected is deprecated" not in caplog.text
            session.on("metrics_collected", lambda ev: None)  # someone else's subscription still warns
            assert "metrics_collected is deprecated" in caplog.text

    asyncio.run(call())


def test_the_async_client_can_be_attached(server, spool_dir, api_key, tenant):
    name = "realtime_gemini_live"

    async def call():
        async with meterline.AsyncClient(api_key, server, spool_dir=spool_dir) as client:
            session = await started_session()
            billing = attach(session, client, session_id="async-attached")
            return await bill_replayed_call(session, billing, name)

    livekit_usage = asyncio.run(call())
    assert totals(tenant, session_id="async-attached") == livekit_expected_totals(livekit_usage)


def _load_example():
    spec = importlib.util.spec_from_file_location("meterline_example_agent", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_agent_bills_a_replayed_call(server, make_client, tenant):
    example = _load_example()
    assert asyncio.iscoroutinefunction(example.entrypoint)
    client = make_client(server)
    name = "pipeline_deepgram_openai_cartesia"

    async def call():
        session = AgentSession()
        billing = example.start_billing(
            session, session_id="example-call", end_user_id="+15550199", client=client
        )
        await session.start(agent=example.Receptionist())
        return await bill_replayed_call(session, billing, name)

    livekit_usage = asyncio.run(call())
    assert totals(tenant, session_id="example-call") == livekit_expected_totals(livekit_usage)
    session = Session.objects.get(session_id="example-call")
    assert (session.end_user_id, session.conversation_type) == ("+15550199", "inbound_call")
    assert sum(livekit_expected_totals(livekit_usage).values()) > Decimal(0)


def test_the_example_agent_is_a_runnable_livekit_cli_app():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "dev" in result.stdout and "start" in result.stdout


def test_attach_names_the_sessions_configured_models_for_usage_that_names_none(
    server, make_client, tenant, monkeypatch
):
    # LiveKit Inference plugins, built from "vendor/model" strings, say their provider and model
    for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.setenv(name, "test-only-not-a-secret-but-long-enough-for-hmac")
    monkeypatch.setenv("LIVEKIT_URL", "wss://livekit.invalid")
    client = make_client(server)

    async def call():
        session = AgentSession(llm="openai/gpt-4o-mini", stt="deepgram/nova-3", tts="cartesia/sonic-3")
        expected = {
            kind: {"provider": getattr(session, kind).provider, "model": getattr(session, kind).model}
            for kind in ("llm", "stt", "tts")
        }
        billing = attach(session, client, session_id="configured")
        assert await billing.aflush(timeout=10)
        return expected

    expected = asyncio.run(call())
    assert expected["llm"] == {"provider": "livekit", "model": "openai/gpt-4o-mini"}
    assert Session.objects.get(session_id="configured").default_models == expected

    # a legacy LLM metric without metadata in that session is stored under the configured LLM
    captured = samples.shifted_metrics(samples.load("pipeline_deepgram_openai_cartesia"))
    legacy = next(dict(m) for m in captured if m["type"] == "llm_metrics" and m["prompt_tokens"])
    legacy.pop("metadata")
    result = client.send_livekit_metrics("configured", [legacy])
    assert result.accepted == 1
    stored = UsageEvent.objects.get(session_id="configured")
    assert (stored.provider, stored.model) == ("livekit", "openai/gpt-4o-mini")
