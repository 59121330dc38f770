"""Corrections through the Python client against the real server (decision 021): ``client.retract`` and
``Event(replaces=…)``, sync and asyncio, spooled across an outage and idempotent when the spool sends them again."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import meterline
import pytest
from meterline import _core

from tests.usage.builders import totals
from usage.models import UsageEvent
from usage.rollups import rollup_drift

pytestmark = pytest.mark.django_db(transaction=True)

KEY = ("tts_characters", "Cartesia", "sonic-3")


def tts(event_id: str, chars: int, **extra) -> meterline.Event:
    return meterline.Event(
        id=event_id,
        timestamp=datetime.now(UTC) - timedelta(minutes=5),
        session_id="call-1",
        provider="Cartesia",
        model="sonic-3",
        usage={"tts_characters": chars},
        **extra,
    )


def test_retract_and_replace_through_the_client(server, make_client, tenant, spool_dir):
    client = make_client(server, record=True)
    assert client.send_events([tts("t-1", 100), tts("t-2", 20), tts("t-3", 3)]).accepted == 3

    answer = client.retract("t-2", reason="counted twice")
    assert answer["id"] == "t-2" and answer["removed_usage"] == {"tts_characters": "20"}
    assert client.retract("t-2", reason="counted twice") == answer  # idempotent
    fix = tts("t-1b", 90, replaces="t-1")
    result = client.send_events([tts("n-1", 1), fix])
    assert result.accepted == 2 and result.replacements == [{"index": 1, "id": "t-1b", "replaces": "t-1"}]
    assert client.send_events([fix]).duplicates == 1
    assert totals(tenant) == {KEY: Decimal(94)}
    assert json.loads(client.recorder.calls[1][2]) == {"reason": "counted twice"}
    assert client.recorder.paths()[1] == "/api/v1/events/t-2/retract"

    # refused for good: raised, set aside in rejected/, and the rest of the spool still goes
    with pytest.raises(meterline.NotFoundError):
        client.retract("no-such-event")
    with pytest.raises(meterline.ConflictError):
        client.retract("t-1", reason="again")  # replaced already
    with pytest.raises(meterline.NotFoundError) as refused:
        client.send_events([tts("x-1", 5, replaces="unknown")])
    assert refused.value.errors[0]["pointer"] == "/events/0/replaces"
    assert client.pending() == 0 and len(list((spool_dir / client.key_id / "rejected").iterdir())) == 3
    assert client.send_events([tts("t-4", 1)]).accepted == 1
    assert totals(tenant) == {KEY: Decimal(95)} and rollup_drift(tenant.pk) == []


def test_corrections_wait_in_the_spool_through_an_outage_and_count_once(
    server, closed_port_url, make_client, tenant, spool_dir
):
    make_client(server).send_events([tts("t-1", 100), tts("t-2", 20)])
    down = make_client(closed_port_url)
    assert down.retract("t-2", reason="test call") is None  # spooled
    assert down.send_events([tts("t-1b", 70, replaces="t-1")]).spooled == 1
    files = sorted((spool_dir / down.key_id).glob("*.json"))
    assert len(files) == 2
    copies = [path.read_bytes() for path in files]

    up = make_client(server)
    flushed = up.flush()
    assert (flushed.delivered, flushed.pending) == (2, 0)
    assert flushed.result.replacements == [{"index": 0, "id": "t-1b", "replaces": "t-1"}]
    assert totals(tenant) == {KEY: Decimal(70)}

    # delivered just before a crash, sent again from the spool: same answers, nothing corrected twice
    for path, copy in zip(files, copies, strict=True):
        path.write_bytes(copy)
    again = up.flush()
    assert (again.delivered, again.rejected, again.result.duplicates) == (2, 0, 1)
    assert totals(tenant) == {KEY: Decimal(70)} and rollup_drift(tenant.pk) == []
    event = UsageEvent.objects.get(event_id="t-2")
    assert event.retraction_reason == "test call" and event.retracted_by == "agent"


def test_the_async_client_corrects_too(server, api_key, tenant, spool_dir):
    async def scenario():
        async with meterline.AsyncClient(api_key, server, spool_dir=spool_dir) as client:
            await client.send_events([tts("t-1", 10), tts("t-2", 5)])
            answer = await client.retract("t-2")
            assert answer["reason"] == "" and answer["retracted_at"]
            result = await client.send_events([tts("t-1b", 12, replaces="t-1")])
            assert result.replacements == [{"index": 0, "id": "t-1b", "replaces": "t-1"}]
            with pytest.raises(meterline.ConflictError):
                await client.send_events([tts("t-1c", 1, replaces="t-1")])

    asyncio.run(scenario())
    assert totals(tenant) == {KEY: Decimal(12)}


def test_corrections_are_checked_before_anything_is_spooled(tmp_path):
    client = meterline.Client(
        "mlk_live_" + "a" * 12 + "_" + "b" * 43, "http://127.0.0.1:9", spool_dir=tmp_path
    )
    for bad in ("", "a/b", "..", "x" * 129):
        with pytest.raises(ValueError):
            client.retract(bad)
    with pytest.raises(ValueError):
        client.retract("ok", reason="x" * 501)
    with pytest.raises(ValueError):
        client.send_events([tts("ok", 1, replaces="bad id")])
    assert client.pending() == 0
    client.close()


def test_a_correction_refused_for_good_is_not_kept_like_a_wrong_setup():
    found = {"type": "https://meterline.dev/problems/event-not-found"}
    another = {"type": "https://meterline.dev/problems/event-of-another-agent"}
    assert _core.classify(404, found) == _core.classify(403, another) == _core.REJECT
    assert _core.classify(404, {"type": "https://meterline.dev/problems/not_found"}) == _core.KEEP
    assert _core.classify(403) == _core.classify(401, another) == _core.KEEP
