"""``attach(..., authorize=Authorize(...))``: the pre-call hold of a LiveKit session (issue 15 part 8, decision
018), against the real server (live_server) and its real Hold rows. The tenant has $100 of credit and a plan of a
$10 base fee, so $90 is available; ``prepaid_hard`` refuses holds above that."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from livekit.agents.voice.events import CloseEvent, CloseReason
from meterline import InsufficientBalanceError
from meterline.livekit import Authorize, attach

from billing import credits, invoicing
from spend import control
from spend.models import Hold, SpendPolicy
from tests.billing.builders import make_plan, subscribe
from tests.sdk.conftest import livekit_expected_totals
from tests.sdk.test_livekit import Pre15Session, bill_replayed_call, started_session
from tests.usage.builders import totals
from usage.models import Session

pytestmark = pytest.mark.django_db(transaction=True)
PRICES = [{"meter_id": "tts_characters", "unit_amount": Decimal("0.01"), "unit_size": Decimal(1)}]
QUICK = 0.05  # extend_every in these tests: the server's shortest TTL is 60 s, the interval is separate


@pytest.fixture
def prepaid(tenant):
    plan = make_plan(base_fee="10.00", prices=PRICES)
    plan.expected_cost_per_minute = Decimal("0.60")
    plan.save()
    subscribe(tenant, plan, starts_on=invoicing.current_period(tenant)[0])
    credits.grant(tenant, "100.00", source="purchased", reason="test")
    return tenant


@pytest.fixture
def prepaid_hard(prepaid):
    SpendPolicy.objects.update_or_create(tenant=prepaid, defaults={"policy": "prepaid-hard"})
    return prepaid


def eventually(check, within: float = 15.0):
    """Poll ``check`` until it returns something truthy (or the time is up); returns its last value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


async def until(check, within: float = 15.0) -> bool:
    """``eventually`` for code on the event loop: waits with asyncio.sleep, so the loop keeps running."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def close(session) -> None:
    session.emit("close", CloseEvent(reason=CloseReason.USER_INITIATED))


def hold_calls(client) -> list[tuple[str, str, int | None]]:
    return [(m, p, s) for m, p, _, s in client.recorder.calls if p.startswith("/api/v1/authorizations")]


def test_the_hold_is_taken_at_attach_kept_while_the_call_runs_and_released_at_close(
    server, make_client, prepaid_hard
):
    client = make_client(server, record=True)
    session = Pre15Session()
    billing = attach(
        session,
        client,
        session_id="held-call",
        authorize=Authorize(amount="25.00", ttl_seconds=120, extend_every=QUICK),
    )

    hold = eventually(lambda: Hold.objects.filter(session_id="held-call").first())
    assert hold is not None, "no hold was asked for"
    assert (hold.tenant, hold.amount, hold.currency, hold.released_at) == (
        prepaid_hard,
        Decimal("25.00"),
        "USD",
        None,
    )
    assert hold.expires_at - hold.created_at == timedelta(seconds=120)
    assert control.balance(prepaid_hard).held == Decimal("25.00")

    # extended while the call runs: the expiry moves on, with the TTL asked for, and it stays one hold
    assert eventually(lambda: Hold.objects.get(pk=hold.pk).expires_at > hold.expires_at)
    assert eventually(lambda: len(hold_calls(client)) >= 3)
    extensions = [json.loads(body) for _, path, body, _ in client.recorder.calls if path.endswith("/extend")]
    assert extensions and all(body == {"ttl_seconds": 120} for body in extensions)
    assert Hold.objects.filter(session_id="held-call").count() == 1
    assert billing.hold["id"] == hold.pk and Decimal(billing.hold["amount"]) == Decimal("25.00")
    assert billing.authorization_refused is None

    close(session)
    assert billing.flush(timeout=10)
    assert eventually(lambda: Hold.objects.get(pk=hold.pk).released_at is not None)
    assert eventually(lambda: (billing.hold or {}).get("released_at"))
    assert control.balance(prepaid_hard).held == Decimal(0)
    assert Session.objects.get(session_id="held-call").ended_at is not None

    # nothing after the release: the extensions stopped with the call
    calls = hold_calls(client)
    time.sleep(10 * QUICK)
    assert hold_calls(client) == calls
    assert calls[0] == ("POST", "/api/v1/authorizations", 201)
    assert calls[-1] == ("POST", f"/api/v1/authorizations/{hold.pk}/release", 200)
    assert {path for _, path, _ in calls[1:-1]} == {f"/api/v1/authorizations/{hold.pk}/extend"}
    assert threading.main_thread().ident not in client.recorder.threads


def test_a_hold_by_expected_duration_is_priced_by_the_server(server, make_client, prepaid):
    client = make_client(server)
    session = Pre15Session()
    billing = attach(session, client, session_id="timed-call", authorize=Authorize(expected_seconds=300))
    hold = eventually(lambda: Hold.objects.filter(session_id="timed-call").first())
    assert hold is not None and hold.amount == Decimal("3.00")  # 300 s at the plan's $0.60 a minute
    close(session)
    assert eventually(lambda: Hold.objects.get(pk=hold.pk).released_at is not None)
    assert billing.authorization_refused is None


def test_a_hold_that_ended_during_the_call_is_asked_for_again(server, make_client, prepaid_hard):
    client = make_client(server)
    session = Pre15Session()
    billing = attach(
        session,
        client,
        session_id="lapsed-call",
        authorize=Authorize(amount="5.00", ttl_seconds=60, extend_every=QUICK),
    )
    first = eventually(lambda: Hold.objects.filter(session_id="lapsed-call").first())
    assert first is not None
    # as if the server had been unreachable for longer than the TTL: the hold lapsed, extending it is a 409
    Hold.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    renewed = eventually(
        lambda: Hold.objects.filter(session_id="lapsed-call", expires_at__gt=timezone.now()).first()
    )
    assert renewed is not None and renewed.pk != first.pk and renewed.amount == Decimal("5.00")
    assert eventually(lambda: (billing.hold or {}).get("id") == renewed.pk)  # None while it is asked anew
    close(session)
    assert eventually(lambda: Hold.objects.get(pk=renewed.pk).released_at is not None)


def test_a_refused_hold_calls_the_agents_handler_on_its_event_loop_and_the_call_goes_on(
    server, make_client, prepaid_hard
):
    client = make_client(server, record=True)
    calls = []

    def on_refused(error):
        # asyncio.get_running_loop raises off the loop; the handler would then be logged, not recorded
        calls.append((error, threading.get_ident(), asyncio.get_running_loop()))

    async def call():
        session = await started_session()
        billing = attach(
            session,
            client,
            session_id="refused-call",
            authorize=Authorize(amount="500.00", on_refused=on_refused),
        )
        assert await until(lambda: calls), "on_refused was never called"
        # refused, the call still runs and is billed
        livekit_usage = await bill_replayed_call(session, billing, "pipeline_deepgram_openai_cartesia")
        return billing, livekit_usage, asyncio.get_running_loop()

    billing, livekit_usage, loop = asyncio.run(call())
    [(error, thread, handler_loop)] = calls
    assert isinstance(error, InsufficientBalanceError)
    assert (error.required, error.available, error.currency) == (Decimal("500.00"), Decimal(90), "USD")
    assert thread == threading.main_thread().ident and handler_loop is loop
    assert billing.authorization_refused is error and billing.hold is None
    assert not Hold.objects.filter(session_id="refused-call").exists()
    # asked once: a refusal is not asked again at each tick
    assert hold_calls(client) == [("POST", "/api/v1/authorizations", 402)]
    assert threading.main_thread().ident not in client.recorder.threads
    assert totals(prepaid_hard, session_id="refused-call") == livekit_expected_totals(livekit_usage)
    assert Session.objects.get(session_id="refused-call").ended_at is not None


def test_an_async_handler_runs_as_a_task_of_the_agents_loop(server, make_client, prepaid_hard):
    client = make_client(server)
    seen = []

    async def on_refused(error):
        await asyncio.sleep(0)
        seen.append((error.required, asyncio.current_task(), asyncio.get_running_loop()))

    async def call():
        session = await started_session()
        billing = attach(
            session,
            client,
            session_id="async-refused",
            authorize=Authorize(expected_seconds=86_400, on_refused=on_refused),  # $864 at $0.01 a second
        )
        assert await until(lambda: seen), "on_refused was never awaited"
        await session.aclose()
        return billing, asyncio.get_running_loop()

    billing, loop = asyncio.run(call())
    [(required, task, handler_loop)] = seen
    assert required == Decimal("864.00") and task is not None and handler_loop is loop
    assert billing.authorization_refused.required == Decimal("864.00")


def test_without_a_handler_a_refusal_is_a_warning_and_a_failing_handler_is_logged(
    server, make_client, prepaid_hard, caplog
):
    client = make_client(server)

    def broken(error):
        raise RuntimeError("handler bug")

    async def broken_async(error):
        raise RuntimeError("async handler bug")

    async def call():
        sessions = [await started_session() for _ in range(3)]
        billings = [
            attach(s, client, session_id=f"refused-{n}", authorize=Authorize(amount="100.00", on_refused=h))
            for n, (s, h) in enumerate(zip(sessions, (None, broken, broken_async), strict=True))
        ]
        assert await until(lambda: caplog.text.count("on_refused raised") == 2)
        assert await until(lambda: "does not cover the hold of session refused-0" in caplog.text)
        for session, billing in zip(sessions, billings, strict=True):
            await session.aclose()
            assert await billing.aflush(timeout=10)
        return billings

    with caplog.at_level(logging.WARNING, logger="meterline"):
        billings = asyncio.run(call())
    assert all(b.authorization_refused is not None and b.closed for b in billings)
    assert "handler bug" in caplog.text and "async handler bug" in caplog.text
    assert Session.objects.filter(session_id__startswith="refused-", ended_at__isnull=False).count() == 3


def test_a_hung_server_never_holds_up_the_agents_event_loop(black_hole_url, make_client):
    # The server accepts the connection and never answers: the hold request stays in flight.
    client = make_client(black_hole_url, timeout=30.0, max_retries=0, record=True)

    def hold_request_in_flight() -> bool:
        names = {t.ident: t.name for t in threading.enumerate()}
        return any(names.get(ident, "").startswith("meterline-hold-") for ident in client.recorder.threads)

    async def call():
        session = await started_session()
        billing = attach(session, client, session_id="hung-hold", authorize=Authorize(amount="1.00"))
        assert await until(hold_request_in_flight)
        ticks = 0
        for _ in range(20):  # the loop runs on while the request waits for its answer
            await asyncio.sleep(0.01)
            ticks += 1
        unanswered = not hold_calls(client)
        await session.aclose()
        return billing, ticks, unanswered

    billing, ticks, unanswered = asyncio.run(call())
    assert ticks == 20 and unanswered
    assert billing.closed and billing.hold is None and billing.authorization_refused is None
    assert threading.main_thread().ident not in client.recorder.threads


def test_an_unreachable_server_is_logged_and_asked_again_at_the_next_tick(
    closed_port_url, make_client, caplog
):
    client = make_client(closed_port_url, max_retries=0, record=True)
    session = Pre15Session()
    refused = []
    with caplog.at_level(logging.WARNING, logger="meterline"):
        billing = attach(
            session,
            client,
            session_id="offline-hold",
            authorize=Authorize(amount="1.00", extend_every=QUICK, on_refused=refused.append),
        )
        assert eventually(lambda: len(hold_calls(client)) >= 3)
        close(session)
    assert set(hold_calls(client)) == {("POST", "/api/v1/authorizations", None)}
    assert "could not hold the cost of session offline-hold" in caplog.text
    assert billing.hold is None and billing.authorization_refused is None and refused == []


def test_authorize_refuses_what_the_server_never_would_up_front(closed_port_url, make_client):
    for bad in (
        {},
        {"amount": "1.00", "expected_seconds": 60},
        {"amount": "0"},
        {"amount": "-1"},
        {"amount": "lots"},
        {"amount": True},
        {"expected_seconds": 86_401},
        {"amount": "1.00", "ttl_seconds": 59},
        {"amount": "1.00", "ttl_seconds": 86_401},
        {"amount": "1.00", "ttl_seconds": 90.5},
        {"amount": "1.00", "ttl_seconds": 60, "extend_every": 60},
        {"amount": "1.00", "extend_every": 0},
        {"amount": "1.00", "on_refused": "print"},
    ):
        with pytest.raises(ValueError):
            Authorize(**bad)
    assert Authorize(amount="1.00").interval == 30  # half of 300 s, at most 30 s
    assert Authorize(amount="1.00", ttl_seconds=60).interval == 30
    assert Authorize(amount=2, extend_every=0.5).amount == Decimal(2)
    client = make_client(closed_port_url)
    with pytest.raises(TypeError, match="Authorize"):
        attach(Pre15Session(), client, session_id="typed", authorize={"amount": "1.00"})
