"""The minimal endpoint of DESIGN §9, served by gunicorn beside the product in ``bench.ingest``'s run.

It is the peer that shows what a Python endpoint that only stores reaches on this machine: a plain WSGI app
(no Django, no authentication: tenant and agent come from the environment) that reads the body with orjson,
checks each event lightly (an id, an RFC 3339 timestamp, a usage object of numbers) and stores the batch in one
statement, deduped as the product and the COPY baseline dedupe: ids claimed in ``usage_eventid``, only the
claimed rows inserted into the partitioned events. The batch goes as one JSON document bound server-side
(``INSERT … SELECT … FROM jsonb_to_recordset(…) … ON CONFLICT DO NOTHING``): psycopg's arrays of 1,000 JSON
strings cost ~20 ms each to send, more than the insert. No sessions, rollups, per-call costs or hooks. It
answers ``{"accepted", "duplicates", "conflicts"}`` like the API, so ``bench.ingest``'s clients and checks serve
both.

    MINIMAL_DATABASE_URL=… MINIMAL_TENANT=1 MINIMAL_AGENT=1 gunicorn bench.minimal:app
"""

from __future__ import annotations

import os
from datetime import datetime

import orjson


def store_claimed(source: str, ctes: str = "") -> str:
    """The statement both peers of ``bench.ingest`` run per batch, from the relation ``source`` (event_id, ts,
    session_id, provider, model, usage, metadata; ``ctes`` may define it): the ids claimed in ``usage_eventid``,
    only the claimed rows inserted, as the product dedupes (decision 023)."""
    return f"""
WITH {ctes}claimed AS (
    INSERT INTO usage_eventid (tenant_id, event_id, timestamp)
    SELECT %(tenant)s, event_id, ts FROM {source}
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO usage_usageevent (tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage,
                              metadata, source, received_at)
SELECT %(tenant)s, %(agent)s, event_id, ts, session_id, provider, model, usage, metadata, 'api', now()
FROM {source} JOIN claimed USING (event_id)
"""  # noqa: S608 - constant SQL fragments only


INSERT = store_claimed(
    "incoming",
    """incoming AS (
    SELECT id AS event_id, timestamp AS ts, coalesce(session_id, '') AS session_id,
           coalesce(provider, '') AS provider, coalesce(model, '') AS model, usage,
           coalesce(metadata, '{}') AS metadata
    FROM jsonb_to_recordset(%(events)s::jsonb)
         AS x(id text, timestamp timestamptz, session_id text, provider text, model text, usage jsonb,
              metadata jsonb)
),
""",
)

_connection = None


def _conn():
    global _connection  # one connection per worker process, made on first use
    if _connection is None:
        import psycopg

        _connection = psycopg.connect(os.environ["MINIMAL_DATABASE_URL"], autocommit=True)
    return _connection


def _answer(start_response, status: str, body: dict) -> list[bytes]:
    data = orjson.dumps(body)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _check(events: list) -> None:
    """The light checks (ValueError/KeyError/TypeError if malformed)."""
    for event in events:
        event_id = event["id"]
        if not isinstance(event_id, str) or not 0 < len(event_id) <= 128:
            raise ValueError("id")
        datetime.fromisoformat(event["timestamp"])
        usage = event["usage"]
        if not isinstance(usage, dict) or not usage:
            raise ValueError("usage")
        for value in usage.values():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError("usage")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        return _answer(start_response, "200 OK", {"ok": True})
    if environ.get("REQUEST_METHOD") != "POST":
        return _answer(start_response, "405 Method Not Allowed", {"detail": "POST only"})
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        events = orjson.loads(environ["wsgi.input"].read(length))["events"]
        if not isinstance(events, list) or not 0 < len(events) <= 1000:
            raise ValueError("events")
        _check(events)
    except (ValueError, KeyError, TypeError) as exc:
        return _answer(start_response, "422 Unprocessable Entity", {"detail": f"invalid: {exc}"})
    params = {
        "events": orjson.dumps(events).decode(),
        "tenant": int(os.environ["MINIMAL_TENANT"]),
        "agent": int(os.environ["MINIMAL_AGENT"]),
    }
    with _conn().cursor() as cursor:
        cursor.execute(INSERT, params)
        accepted = cursor.rowcount
    return _answer(
        start_response, "200 OK", {"accepted": accepted, "duplicates": len(events) - accepted, "conflicts": 0}
    )
