"""The SDK refuses identifiers the API would refuse, in the caller's code and before anything is spooled or
sent (issue 12.1): the same alphabet as the server, matched in full."""

from __future__ import annotations

import asyncio
import re

import httpx
import meterline
import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterline import _core

from usage import validation

KEY = "mlk_live_0123456789ab_" + "x" * 43
BAD = ["call-1\n", "call 1", "room/42", ".", "..", "x" * 129, "caf\u00e9", "a\x00b", "a\u2028"]


@given(st.text(max_size=130) | st.text("AZaz09._:@+-\n", max_size=130))
def test_the_sdk_and_the_server_agree_on_the_alphabet(text):
    sdk = _core.IDENTIFIER_RE.fullmatch(text) is not None and len(text) <= _core.MAX_ID_LENGTH
    assert sdk is validation.is_identifier(text)


@pytest.fixture
def client(tmp_path):
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, json={}))
    with meterline.Client(KEY, "http://billing.test", transport=transport, spool_dir=tmp_path) as client:
        client.sent = sent
        yield client


def event(**fields):
    return {"id": "e-1", "timestamp": "2026-11-20T10:00:00Z", "usage": {"tts_characters": 3}, **fields}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda c, bad: c.send_events([event(), event(id=bad)]), "events[1] id"),
        (lambda c, bad: c.send_events([event(session_id=bad)]), "events[0] session_id"),
        (lambda c, bad: c.send_events([event(metadata={bad: 1})]), "events[0] metadata key"),
        (lambda c, bad: c.send_livekit_metrics(bad, [{"type": "tts_metrics"}]), "session_id"),
        (lambda c, bad: c.send_livekit_usage(bad, [{"type": "tts_usage"}]), "session_id"),
        (lambda c, bad: c.put_session(bad, ended_at=None), "session_id"),
        (lambda c, bad: c.put_session("call-1", end_user_id=bad), "end_user_id"),
        (lambda c, bad: c.background().submit_events([event(session_id=bad)]), "events[0] session_id"),
        (lambda c, bad: c.background().submit_session(bad, {}), "session_id"),
        (lambda c, bad: c.background().submit_metric(bad, {"type": "tts_metrics"}), "session_id"),
    ],
)
def test_a_bad_identifier_raises_in_the_callers_code_and_nothing_is_sent(client, call, names, bad):
    with pytest.raises(ValueError, match=f"^{re.escape(names)} "):
        call(client, bad)
    assert client.sent == [] and client.pending() == 0


def test_empty_ids_are_refused_where_an_id_is_required(client):
    with pytest.raises(ValueError, match="id"):
        client.send_events([event(id="")])
    with pytest.raises(ValueError, match="session_id"):
        client.put_session("", ended_at=None)
    assert client.sent == []


def test_the_async_client_refuses_them_too(tmp_path):
    async def run():
        async with meterline.AsyncClient(KEY, "http://billing.test", spool_dir=tmp_path) as client:
            with pytest.raises(ValueError, match="session_id"):
                await client.put_session("call\n1", ended_at=None)
            with pytest.raises(ValueError, match="id"):
                await client.send_events([event(id="e 1")])

    asyncio.run(run())


@pytest.mark.parametrize(
    "good", ["AJ_v3jYMGPJFx59", "+14155550123", "sip:alice@example.com", "...", "x" * 128]
)
def test_ids_the_server_takes_are_sent(client, good):
    client.send_events([event(id=good, session_id=good, metadata={good[:40]: 1})])
    client.put_session(good, end_user_id=good)
    assert len(client.sent) == 2
