"""Client behaviour that a healthy server cannot show: 5xx, resets, Retry-After forms, backoff bounds, the exact
request shape, and concurrent senders sharing one spool. These use httpx's MockTransport (no server)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import threading
import time

import httpx
import meterline
import pytest
from meterline import _core

KEY = "mlk_live_0123456789ab_" + "x" * 43
OK = {"accepted": 1, "duplicates": 0, "conflicts": 0, "conflicting_events": []}


def scripted(*answers):
    """A transport answering with the given responses/exceptions in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, json=OK if answer == 200 else {"title": "x", "errors": []})
        return answer

    return httpx.MockTransport(handler), seen


def client_with(transport, tmp_path, **options) -> meterline.Client:
    client = meterline.Client(
        KEY,
        "http://billing.test",
        transport=transport,
        spool_dir=tmp_path,
        backoff_base=0.5,
        backoff_max=8.0,
        **options,
    )
    client.waits = []
    client._sleep = client.waits.append
    return client


def one_event():
    return [{"id": "e1", "timestamp": "2026-11-20T10:00:00Z", "usage": {"tts_characters": 3}}]


@pytest.mark.parametrize(
    "failure",
    [
        500,
        502,
        503,
        504,
        408,
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
    ],
)
def test_transient_failures_are_retried_then_succeed(tmp_path, failure):
    transport, seen = scripted(failure, failure, 200)
    client = client_with(transport, tmp_path)
    result = client.send_events(one_event())
    assert result.accepted == 1 and result.spooled == 0
    assert len(seen) == 3 and client.pending() == 0
    # Exponential backoff with jitter: attempt n waits a random time in [d/2, d], d = 0.5·2^n.
    assert 0.25 <= client.waits[0] <= 0.5 and 0.5 <= client.waits[1] <= 1.0


def test_backoff_is_exponential_capped_and_jittered():
    policy = _core.RetryPolicy(max_retries=10, backoff_base=0.5, backoff_max=8.0)
    rng = random.Random(7)
    for attempt in range(10):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = {policy.backoff(attempt, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("http-date in 30 s", pytest.approx(30, abs=2)),
        ("http-date 30 s ago", 0.0),
    ],
)
def test_429_waits_for_retry_after_in_seconds_or_as_a_date(tmp_path, header, expected):
    if header.startswith("http-date"):
        header = email.utils.formatdate(
            time.time() + (30 if header.endswith("in 30 s") else -30), usegmt=True
        )
    transport, seen = scripted(httpx.Response(429, headers={"Retry-After": header}, json={}), 200)
    client = client_with(transport, tmp_path)
    assert client.send_events(one_event()).accepted == 1
    assert client.waits == [expected] and len(seen) == 2


def test_a_retry_after_beyond_the_limit_is_not_waited_for_and_the_batch_stays_spooled(tmp_path):
    transport, seen = scripted(httpx.Response(503, headers={"Retry-After": "3600"}, json={}))
    client = client_with(transport, tmp_path, max_retry_after=60)
    result = client.send_events(one_event())
    assert result.spooled == 1 and not result.delivered
    assert client.waits == [] and len(seen) == 1 and client.pending() == 1


def test_exhausted_retries_spool_instead_of_raising(tmp_path):
    transport, seen = scripted(httpx.ConnectError("refused"))
    client = client_with(transport, tmp_path, max_retries=3)
    result = client.send_events(one_event())
    assert result.spooled == 1 and len(seen) == 4 and len(client.waits) == 3
    assert isinstance(client.last_error, httpx.ConnectError)


@pytest.mark.parametrize(
    ("status", "error", "kept"),
    [
        (400, meterline.ValidationError, 0),
        (413, meterline.ValidationError, 0),
        (422, meterline.ValidationError, 0),
        (409, meterline.ConflictError, 0),
        (401, meterline.AuthenticationError, 1),
        (403, meterline.AuthenticationError, 1),
        (404, meterline.NotFoundError, 1),
    ],
)
def test_client_errors_are_never_retried(tmp_path, status, error, kept):
    transport, seen = scripted(
        httpx.Response(status, json={"title": "No", "errors": [{"pointer": "/x", "detail": "y"}]})
    )
    client = client_with(transport, tmp_path)
    with pytest.raises(error) as caught:
        client.send_events(one_event())
    assert caught.value.status == status and caught.value.errors == [{"pointer": "/x", "detail": "y"}]
    assert len(seen) == 1 and client.waits == []
    assert client.pending() == kept  # bad data is set aside; a bad key or URL keeps the batch


def test_request_shape(tmp_path):
    transport, seen = scripted(
        httpx.Response(200, json=OK),
        httpx.Response(201, json={"session_id": "sip:+1555@pbx"}),
        httpx.Response(200, json={"period": "2026-11", "spent": "12.50"}),
    )
    client = meterline.Client(KEY, "http://billing.test/api/v1/", transport=transport, spool_dir=tmp_path)
    client.send_livekit_usage(
        "AJ_1",
        [{"type": "tts_usage", "provider": "Cartesia", "model": "sonic-3", "characters_count": 12}],
        timestamp=1795000000.5,
    )
    assert client.put_session("sip:+1555@pbx", end_user_id="u", ended_at=None) == {
        "session_id": "sip:+1555@pbx"
    }
    assert client.get_budget() == {"period": "2026-11", "spent": "12.50"}
    post, put, get = seen
    for request in seen:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["user-agent"].startswith("meterline-python/")
    assert (post.method, post.url.path) == ("POST", "/api/v1/livekit/usage")
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.content) == {
        "session_id": "AJ_1",
        "timestamp": "2026-11-18T11:06:40.500000Z",
        "usage": [{"type": "tts_usage", "provider": "Cartesia", "model": "sonic-3", "characters_count": 12}],
    }
    assert (put.method, put.url.raw_path) == ("PUT", b"/api/v1/sessions/sip%3A%2B1555%40pbx")
    assert json.loads(put.content) == {"end_user_id": "u", "ended_at": None}
    assert (get.method, str(get.url), get.content) == ("GET", "http://billing.test/api/v1/budget", b"")


def test_session_ids_the_route_cannot_address_are_refused_up_front(tmp_path):
    client = client_with(scripted(200)[0], tmp_path)
    for bad in ("a/b", ".", "..", "", "x" * 129):
        with pytest.raises(ValueError):
            client.put_session(bad, end_user_id="u")
    assert client.pending() == 0


def test_an_auth_failure_stops_delivery_but_a_404_does_not_block_the_rest(tmp_path):
    offline = client_with(scripted(httpx.ConnectError("down"))[0], tmp_path, max_retries=0)
    for i in range(3):
        offline.send_events(
            [{"id": f"e{i}", "timestamp": "2026-11-20T10:00:00Z", "usage": {"tts_characters": 1}}]
        )
    transport, seen = scripted(401)
    with pytest.raises(meterline.AuthenticationError):
        client_with(transport, tmp_path).send_events(
            [{"id": "e3", "timestamp": "2026-11-20T10:00:00Z", "usage": {"tts_characters": 1}}]
        )
    assert len(seen) == 1  # stopped at the first 401: the key is wrong for every batch alike
    transport, seen = scripted(404, 200, 200, 200)
    flushed = client_with(transport, tmp_path).flush()
    assert len(seen) == 4 and flushed.delivered == 3 and flushed.pending == 1  # the 404 one is kept


def test_get_budget_errors(tmp_path):
    client = client_with(scripted(httpx.Response(404, text="<h1>Not Found</h1>"))[0], tmp_path)
    with pytest.raises(meterline.NotFoundError):
        client.get_budget()
    client = client_with(scripted(httpx.ConnectError("refused"))[0], tmp_path, max_retries=1)
    with pytest.raises(meterline.ServiceUnavailableError):
        client.get_budget()
    client = client_with(scripted(503)[0], tmp_path, max_retries=1)
    with pytest.raises(meterline.ServerError):
        client.get_budget()


def test_inputs_are_checked_before_anything_is_spooled(tmp_path):
    client = client_with(scripted(200)[0], tmp_path)
    with pytest.raises(ValueError, match="api_key"):
        meterline.Client("sk-not-ours", "http://billing.test", spool_dir=tmp_path)
    with pytest.raises(ValueError, match="timezone-aware"):
        from datetime import datetime

        client.send_events([{"timestamp": datetime(2026, 1, 1), "usage": {"tts_characters": 1}}])
    with pytest.raises(ValueError):
        client.send_events([{"usage": {"tts_characters": float("nan")}}])
    with pytest.raises(ValueError):
        client.send_events([])
    assert client.pending() == 0


def test_two_senders_sharing_a_spool_deliver_each_batch_once(tmp_path):
    delivered: list[str] = []
    lock = threading.Lock()

    def handler(request):
        time.sleep(0.002)
        with lock:
            delivered.append(json.loads(request.content)["events"][0]["id"])
        return httpx.Response(200, json=OK)

    offline = client_with(scripted(httpx.ConnectError("down"))[0], tmp_path, max_retries=0)
    for i in range(60):
        offline.send_events(
            [{"id": f"e{i}", "timestamp": "2026-11-20T10:00:00Z", "usage": {"tts_characters": 1}}]
        )
    assert offline.pending() == 60
    senders = [
        meterline.Client(
            KEY, "http://billing.test", transport=httpx.MockTransport(handler), spool_dir=tmp_path
        )
        for _ in range(3)
    ]
    threads = [threading.Thread(target=s.flush) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(delivered) == sorted(f"e{i}" for i in range(60))  # each exactly once
    assert senders[0].pending() == 0


def test_unwritable_spool_falls_back_to_memory(tmp_path, monkeypatch):
    transport, _ = scripted(httpx.ConnectError("down"), 200)
    client = client_with(transport, tmp_path, max_retries=0)

    def broken(request):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client.spool, "write", broken)
    assert client.send_events(one_event()).spooled == 1
    assert client.pending() == 1
    assert client.flush().delivered == 1 and client.pending() == 0


def test_memory_only_spool(tmp_path):
    transport, _ = scripted(httpx.ConnectError("down"), 200)
    client = meterline.Client(KEY, "http://billing.test", transport=transport, spool_dir=False, max_retries=0)
    assert client.spool_dir is None
    assert client.send_events(one_event()).spooled == 1
    assert client.flush().delivered == 1


def test_async_client_retries_and_request_shape(tmp_path):
    seen: list[httpx.Request] = []
    answers = [httpx.Response(503, headers={"Retry-After": "2"}, json={}), httpx.Response(200, json=OK)]

    async def handler(request):
        seen.append(request)
        return answers[len(seen) - 1]

    async def scenario():
        client = meterline.AsyncClient(
            KEY, "http://billing.test", transport=httpx.MockTransport(handler), spool_dir=tmp_path
        )
        waits = []

        async def fake_sleep(seconds):
            waits.append(seconds)

        client._sleep = fake_sleep
        result = await client.send_livekit_metrics(
            "s1", [{"type": "tts_metrics", "timestamp": 1.5, "characters_count": 4}]
        )
        await client.aclose()
        return result, waits

    result, waits = asyncio.run(scenario())
    assert result.accepted == 1 and waits == [2.0]
    assert json.loads(seen[1].content) == {
        "session_id": "s1",
        "metrics": [{"type": "tts_metrics", "timestamp": 1.5, "characters_count": 4}],
    }
    assert seen[0].content == seen[1].content  # a retry is byte-identical
