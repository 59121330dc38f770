#!/usr/bin/env python
"""``make bench-invoice``: the invoicing benchmark of DESIGN §9 (a script, not a test).

For each size (default 1 M and 10 M events) it creates a scratch database, migrates it, and loads one past
month of realistic usage for 100 tenants with COPY: voice-agent sessions of 40–120 LiveKit metrics events
(Deepgram nova-3 + gpt-4o-mini + Cartesia sonic-3 pipelines, gpt-realtime with gpt-4o-transcribe, Gemini
Live), shaped by time of day in each tenant's time zone. Worker processes (one per CPU) generate the rows
and COPY them in pieces; each piece's hourly rollups are derived in SQL from exactly the rows its INSERT
returned, with the tenant-local hour bucket of usage.ingest._INSERT_SQL, so they are what the API would
have produced (the checks below compare them with the raw events).

It then times, in this process, ``billing.invoicing.generate_invoice`` for every tenant and month and
``finalize_invoice(force=True)`` for every invoice, prints wall time, invoices/s, the share spent waiting
on SQL, rollup rows and (tenant, meter, provider, model) groups, and checks three tenants' invoices against
a sum over their raw events (exact Decimal equality). Finally a table shows how the cost grows with size.
The scratch database is dropped afterwards, whatever happens.

Database: the server named by ``DATABASE_URL``; without it, PostgreSQL on 127.0.0.1:5432 if one answers,
else an embedded server in ``.devdata/bench-invoice-pg`` (DESIGN §1). Only ``meterline_bench_invoice``
(or ``--db-name``) is created and dropped on it.

    .venv/bin/python scripts/bench_invoice.py                    # 1 M and 10 M events (about 10 minutes)
    .venv/bin/python scripts/bench_invoice.py --events 1M        # one size
    .venv/bin/python scripts/bench_invoice.py --quick            # 200 k events, a smoke run
    .venv/bin/python scripts/bench_invoice.py --events 1M --profile   # + cProfile of generate_invoice
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import hashlib
import io
import json
import math
import os
import platform
import pstats
import random
import secrets
import shutil
import signal
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from benchdb import (
    BASE,
    PROTECTED_DATABASES,
    Clock,
    SqlTimer,
    decimal_text,
    detach_indexes,
    migrate,
    parse_count,
    progress,
    progress_done,
    recreate_database,
    schema_fingerprint,
    with_database,
)

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

# Target from DESIGN §9: a month of 10 M events across 100 tenants invoiced in ≤ 60 s.
TARGET_SECONDS = 60.0
TARGET_EVENTS = 10_000_000

# --- the tenants ------------------------------------------------------------------------------------------

# Tenant 0 is in India (+05:30) so the half-hour offset is always present; others cycle through these,
# which include DST changes inside October (Europe, Sydney) and a +05:45 and a −03:30 zone.
TIMEZONES = [
    "Asia/Kolkata",
    "America/New_York",
    "Europe/Berlin",
    "UTC",
    "America/Los_Angeles",
    "Europe/London",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Sao_Paulo",
    "Asia/Singapore",
    "America/Chicago",
    "Europe/Paris",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Auckland",
    "Asia/Dubai",
]
AGENT_NAMES = ["receptionist", "support-line", "after-hours", "booking", "sales-outbound"]
# Agent kinds and how often a tenant's agent is of each kind.
PIPELINE, OPENAI_REALTIME, GEMINI_LIVE = "pipeline", "openai_realtime", "gemini_live"
AGENT_KINDS = [PIPELINE] * 6 + [OPENAI_REALTIME] * 3 + [GEMINI_LIVE]
CONVERSATION_TYPES = ["inbound_call", "inbound_call", "web_call", "outbound_call"]
GEMINI_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
# Relative session starts per tenant-local hour of day (business hours peak); weekends × WEEKEND.
HOURLY_SHAPE = [
    0.15, 0.10, 0.08, 0.08, 0.10, 0.20, 0.40, 0.70, 1.00, 1.20, 1.30, 1.30,
    1.20, 1.20, 1.30, 1.30, 1.20, 1.00, 0.80, 0.60, 0.45, 0.35, 0.25, 0.20,
]  # fmt: skip
WEEKEND = 0.45
# Sessions may start up to this long before the local month and run past its end, so some events fall just
# outside the period on both sides and the month boundary (in the tenant's zone) is actually exercised.
SPILL = timedelta(hours=6)


@dataclass
class TenantSpec:
    index: int
    slug: str
    timezone: str
    events: int
    agents: list[tuple[str, str]]  # (name, kind)
    always_on: bool  # a 24/7 contact centre: a flatter daily shape
    pk: int = 0
    agent_pks: list[int] = field(default_factory=list)


def tenant_specs(count: int, events: int, rng: random.Random) -> list[TenantSpec]:
    """``count`` tenants whose sizes are skewed (log-normal) and add up to exactly ``events``."""
    weights = [rng.lognormvariate(0, 1.1) for _ in range(count)]
    total = sum(weights)
    shares = [events * w / total for w in weights]
    sizes = [math.floor(s) for s in shares]
    for i in sorted(range(count), key=lambda i: sizes[i] - shares[i])[: events - sum(sizes)]:
        sizes[i] += 1
    specs = []
    for i in range(count):
        names = rng.sample(AGENT_NAMES, rng.randint(2, 5))
        specs.append(
            TenantSpec(
                index=i,
                slug=f"bench-{i:03d}",
                timezone=TIMEZONES[i % len(TIMEZONES)],
                events=sizes[i],
                agents=[(name, rng.choice(AGENT_KINDS)) for name in names],
                always_on=rng.random() < 0.2,
            )
        )
    return specs


# --- events -------------------------------------------------------------------------------------------------


def start_hours(spec: TenantSpec, start: date, end: date) -> tuple[list[int], list[float]]:
    """UTC hours (as UNIX seconds) in which the tenant's sessions may start, with cumulative weights."""
    zone = ZoneInfo(spec.timezone)
    first = datetime.combine(start, datetime.min.time(), tzinfo=zone) - SPILL
    last = datetime.combine(end, datetime.min.time(), tzinfo=zone) + SPILL
    hours, cumulative, total = [], [], 0.0
    instant = int(first.timestamp())
    while instant < last.timestamp():
        local = datetime.fromtimestamp(instant + 1800, zone)
        weight = HOURLY_SHAPE[local.hour] * (WEEKEND if local.weekday() >= 5 else 1.0)
        if spec.always_on:
            weight = 0.5 + weight / 2
        total += weight
        hours.append(instant)
        cumulative.append(total)
        instant += 3600
    return hours, cumulative


def session_events(kind: str, count: int, start_us: int, rng: random.Random) -> list[tuple]:
    """One conversation's events: (micros, livekit type, provider, model, usage JSON text).

    Quantities follow the LiveKit sessions captured in tests/data/livekit (the demo data's distribution):
    Deepgram reports audio in 5 s chunks, gpt-4o-mini's prompt grows and is cached in 128-token steps,
    gpt-realtime reports text and audio tokens with its transcriber alongside.
    """
    rand = rng.random
    events: list[tuple] = []
    t = start_us
    turn = 0
    while len(events) < count:
        t += int(2_000_000 + rand() * 10_000_000)  # the user speaks
        if kind == PIPELINE:
            chunks = 1 + (rand() < 0.55) + (rand() < 0.2)
            for chunk in range(chunks):
                audio = "5" if chunk < chunks - 1 else decimal_text(50 + int(rand() * 450), 2)
                events.append((t, "stt_metrics", "Deepgram", "nova-3", f'{{"stt_audio_seconds": "{audio}"}}'))
                t += 5_000_000 if chunk < chunks - 1 else int(300_000 + rand() * 1_000_000)
            for _ in range(1 + (rand() < 0.2)):  # a tool call makes a second LLM request
                prompt = 40 + int(rand() * 160) if turn else 900 + int(rand() * 250)
                cached = 1024 + 128 * min(turn // 3, 4) if turn and rand() < 0.92 else 0
                output = 8 + int(rand() * 50)
                usage = f'{{"llm_input_text_tokens": "{prompt}", "llm_output_text_tokens": "{output}"' + (
                    f', "llm_input_cached_text_tokens": "{cached}"}}' if cached else "}"
                )
                events.append((t, "llm_metrics", "api.openai.com", "gpt-4o-mini", usage))
                t += int(400_000 + rand() * 1_200_000)
            characters = 30 + int(rand() * 160)
            audio = decimal_text(int(characters * (58 + rand() * 14)), 3)
            events.append(
                (
                    t,
                    "tts_metrics",
                    "Cartesia",
                    "sonic-3",
                    f'{{"tts_characters": "{characters}", "tts_audio_seconds": "{audio}"}}',
                )
            )
        elif kind == OPENAI_REALTIME:
            events.append(
                (
                    t,
                    "stt_metrics",
                    "api.openai.com",
                    "gpt-4o-transcribe",
                    f'{{"stt_input_tokens": "{15 + int(rand() * 20)}", "stt_output_tokens": "{1 + int(rand() * 12)}"}}',
                )
            )
            t += int(50_000 + rand() * 200_000)
            parts = [
                f'"llm_input_text_tokens": "{(10 + int(rand() * 90)) if turn else (880 + int(rand() * 60))}"',
                f'"llm_input_audio_tokens": "{80 + int(rand() * 160)}"',
                f'"llm_output_text_tokens": "{5 + int(rand() * 40)}"',
                f'"llm_output_audio_tokens": "{25 + int(rand() * 170)}"',
            ]
            if turn:
                parts.append(f'"llm_input_cached_text_tokens": "{896 + 32 * min(turn, 6)}"')
                if rand() < 0.85:
                    parts.append(f'"llm_input_cached_audio_tokens": "{64 * min(turn, 14)}"')
            events.append(
                (t, "realtime_model_metrics", "api.openai.com", "gpt-realtime", "{" + ", ".join(parts) + "}")
            )
        else:  # GEMINI_LIVE
            usage = (
                f'{{"llm_input_text_tokens": "{680 + 15 * min(turn, 28)}", '
                f'"llm_output_text_tokens": "{12 + int(rand() * 15)}"'
                + (f', "llm_input_audio_tokens": "{1 + int(rand() * 5)}"}}' if rand() < 0.85 else "}")
            )
            events.append((t, "realtime_model_metrics", "Gemini", GEMINI_MODEL, usage))
        turn += 1
    return events[:count]


EVENT_COLUMNS = (
    "tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage, metadata, source, "
    "received_at"
)
SESSION_COLUMNS = (
    "tenant_id, agent_id, session_id, started_at, ended_at, end_user_id, conversation_type, metadata, "
    "livekit_report_mode, created_at, updated_at"
)
PIECE_EVENTS = 100_000  # a tenant's events are generated and loaded in pieces of this size, in parallel


@dataclass(frozen=True)
class Piece:
    """Part of one tenant's month of events, generated by one worker process."""

    spec: TenantSpec
    number: int
    events: int
    start: date
    end: date
    seed: int


def pieces(specs: list[TenantSpec], start: date, end: date, seed: int) -> list[Piece]:
    return [
        Piece(spec, number, min(PIECE_EVENTS, spec.events - offset), start, end, seed)
        for spec in specs
        for number, offset in enumerate(range(0, spec.events, PIECE_EVENTS))
    ]


def piece_chunks(piece: Piece, sessions: list[str], chunk_rows: int = 4000):
    """Yields COPY text for the piece's events, a few thousand rows at a time; appends its sessions' rows.

    Each session is one agent's conversation: it starts at a time drawn from the tenant's daily shape and
    holds 40–120 events (the piece's last session may be shorter). Ids are LiveKit-style derived ids.
    """
    spec = piece.spec
    rng = random.Random(f"{piece.seed}/{spec.index}/{piece.number}")
    hours, cumulative = start_hours(spec, piece.start, piece.end)
    top = cumulative[-1]
    clock = Clock().text
    sha1 = hashlib.sha1
    slots = range(len(spec.agents))
    agent_weights = [1.0 / (slot + 1) for slot in slots]
    remaining = piece.events
    lines: list[str] = []
    number = piece.number * 10_000
    while remaining > 0:
        number += 1
        slot = rng.choices(slots, weights=agent_weights)[0]
        agent_name, kind = spec.agents[slot]
        hour = hours[bisect.bisect_left(cumulative, rng.random() * top)]
        start_us = hour * 1_000_000 + int(rng.random() * 3_600_000_000)
        count = min(remaining, rng.randint(40, 120))
        remaining -= count
        session = f"{agent_name}-{datetime.fromtimestamp(hour, UTC):%Y%m%d}-{number:07d}"
        prefix = f"{spec.pk}\t{spec.agent_pks[slot]}\t"
        micros = start_us
        for seq, (micros, lk_type, provider, model, usage) in enumerate(
            session_events(kind, count, start_us, rng)
        ):
            event_id = f"lk:{lk_type}:{sha1(f'{session}/{seq}'.encode()).hexdigest()}"
            lines.append(
                f"{prefix}{event_id}\t{clock(micros)}\t{session}\t{provider}\t{model}\t{usage}\t"
                f'{{"livekit_type": "{lk_type}"}}\tlivekit_metrics\t'
                f"{clock(micros + 150_000 + (seq % 7) * 100_000)}\n"
            )
        first, last = clock(start_us), clock(micros)
        sessions.append(
            f"{prefix}{session}\t{first}\t{last}\t\t{rng.choice(CONVERSATION_TYPES)}\t{{}}\tmetrics\t"
            f"{first}\t{last}\n"
        )
        if len(lines) >= chunk_rows:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


# Each piece is COPYed into a temporary table and moved into usage_usageevent by the statement below, which
# derives the rollups from exactly the rows the INSERT returned, with the tenant-local hour bucket of
# usage.ingest._INSERT_SQL. A session never spans two pieces and the rollup key includes the session, so
# these are the groups a single GROUP BY over all events would give (the unique constraint, rebuilt after
# the load, would refuse a duplicate). The rollups go to a staging table first and are then written to
# usage_usagerollup in hour order, as ingestion appends them: each tenant's month is spread over the whole
# table as in production instead of packed together, which would flatter the reads being measured.
PIECE_SQL = f"""
WITH inserted AS (
    INSERT INTO usage_usageevent ({EVENT_COLUMNS})
    SELECT {EVENT_COLUMNS} FROM piece_events
    RETURNING tenant_id, agent_id, session_id, provider, model, timestamp, usage
)
INSERT INTO bench_rollups (tenant_id, agent_id, session_id, meter, provider, model, hour, quantity, event_count)
SELECT i.tenant_id, i.agent_id, i.session_id, u.key, i.provider, i.model,
       date_trunc('hour', i.timestamp, %(tz)s), sum(u.value::numeric), count(*)
FROM inserted i CROSS JOIN LATERAL jsonb_each_text(i.usage) AS u
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""  # noqa: S608 - column lists are constants
ROLLUP_COLUMNS = "tenant_id, agent_id, session_id, meter, provider, model, hour, quantity, event_count"
STAGE_ROLLUPS_SQL = (
    f"CREATE UNLOGGED TABLE bench_rollups AS SELECT {ROLLUP_COLUMNS} FROM usage_usagerollup WITH NO DATA"  # noqa: S608
)
LAY_OUT_ROLLUPS_SQL = f"""
INSERT INTO usage_usagerollup ({ROLLUP_COLUMNS})
SELECT {ROLLUP_COLUMNS} FROM bench_rollups ORDER BY hour, tenant_id, agent_id, session_id, meter
"""  # noqa: S608 - column lists are constants
# The per-agent rollups (usage_agentrollup) are the per-session ones summed without the session, as ingestion
# keeps them in the same statement; in hour order too.
LAY_OUT_AGENT_ROLLUPS_SQL = """
INSERT INTO usage_agentrollup (tenant_id, agent_id, meter, provider, model, hour, quantity, event_count)
SELECT tenant_id, agent_id, meter, provider, model, hour, sum(quantity), sum(event_count)
FROM bench_rollups GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY hour, tenant_id, agent_id, meter, provider, model
"""


def copy_piece(task: tuple[str, Piece]) -> tuple[int, str, int, float, float]:
    """Worker process: generate one piece, COPY it and roll it up over its own connection (PostgreSQL
    parses rows in one backend per worker while the worker builds the next chunk). Returns (events,
    session rows as COPY text, session count, this process's CPU seconds, the backend's CPU seconds);
    the sessions are loaded afterwards in one COPY."""
    import psycopg

    url, piece = task
    sessions: list[str] = []
    cpu = time.process_time()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET temp_buffers = '256MB'")
        cur.execute("SET work_mem = '256MB'")
        cur.execute("SET jit = off")  # the planner's row estimates would make it compile, for nothing
        cur.execute(
            f"CREATE TEMP TABLE piece_events ON COMMIT DROP AS SELECT {EVENT_COLUMNS} "  # noqa: S608 - constant
            "FROM usage_usageevent WITH NO DATA"
        )
        with cur.copy(f"COPY piece_events ({EVENT_COLUMNS}) FROM STDIN") as copy:
            for chunk in piece_chunks(piece, sessions):
                copy.write(chunk)
        cur.execute(PIECE_SQL, {"tz": piece.spec.timezone})
        conn.commit()
        db_cpu = backend_cpu_seconds(conn.info.backend_pid) or 0.0
    return piece.events, "".join(sessions), len(sessions), time.process_time() - cpu, db_cpu


# --- database set-up --------------------------------------------------------------------------------------

BULK_TABLES = ["usage_usageevent", "usage_session", "usage_usagerollup", "usage_agentrollup"]


def create_fixtures(specs: list[TenantSpec], period_start: date) -> None:
    """Plan, provider rates, tenants, agents and subscriptions through the ORM (a few hundred rows)."""
    from billing.demo import create_demo_plan, create_demo_rates
    from billing.models import Subscription
    from tenants.models import Agent, Tenant

    create_demo_rates()
    plan = create_demo_plan()  # the plan of billing.demo.load_demo_billing (which also invoices)

    tenants = Tenant.objects.bulk_create(
        Tenant(
            name=f"Bench tenant {s.index:03d}",
            slug=s.slug,
            currency="USD",
            timezone=s.timezone,
            billing_email=f"billing@{s.slug}.example",
        )
        for s in specs
    )
    for spec, tenant in zip(specs, tenants, strict=True):
        spec.pk = tenant.pk
    agents = Agent.objects.bulk_create(
        Agent(tenant_id=s.pk, name=name, metadata={"kind": kind}) for s in specs for name, kind in s.agents
    )
    by_tenant = defaultdict(list)
    for agent in agents:
        by_tenant[agent.tenant_id].append(agent.pk)
    for spec in specs:
        spec.agent_pks = by_tenant[spec.pk]
    Subscription.objects.bulk_create(
        Subscription(tenant_id=s.pk, plan=plan, starts_on=period_start - timedelta(days=61)) for s in specs
    )


def load_usage(url: str, specs: list[TenantSpec], period_start: date, period_end: date, seed: int) -> dict:
    """COPY the events and sessions, derive the rollups, restore indexes; returns timings and counts.

    Events are generated, COPYed and rolled up by one worker process per CPU, each piece in its own
    transaction; everything else happens on one connection. (A failure half-way leaves a broken scratch
    database, which is dropped anyway.)
    """
    import multiprocessing

    import psycopg

    timings: dict[str, float] = {}
    work = pieces(specs, period_start, period_end, seed)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        before = schema_fingerprint(cur, BULK_TABLES)
        restore = [stmt for table in BULK_TABLES for stmt in detach_indexes(cur, table)]
        cur.execute(STAGE_ROLLUPS_SQL)
        conn.commit()

        began = time.perf_counter()
        rows = session_count = 0
        sessions: list[str] = []
        context = multiprocessing.get_context("spawn")  # workers inherit no database connection
        py_cpu = db_cpu = 0.0
        with context.Pool(os.cpu_count() or 1) as pool:
            for events, sessions_text, count, py, db in pool.imap_unordered(
                copy_piece, [(url, p) for p in work]
            ):
                rows += events
                session_count += count
                sessions.append(sessions_text)
                py_cpu += py
                db_cpu += db
                progress(f"events: {rows:,} rows", began)
        with cur.copy(f"COPY usage_session ({SESSION_COLUMNS}) FROM STDIN") as copy:
            for text in sessions:
                copy.write(text)
        timings["copy"] = time.perf_counter() - began
        progress_done(
            f"COPY {rows:,} events in {len(work)} pieces, each rolled up as inserted, and "
            f"{session_count:,} sessions",
            timings["copy"],
        )
        print(f"    CPU: Python generating rows {py_cpu:.1f} s, PostgreSQL backends {db_cpu:.1f} s")

        began = time.perf_counter()
        cur.execute("SET LOCAL work_mem = '512MB'")
        cur.execute("SET LOCAL jit = off")
        cur.execute(LAY_OUT_ROLLUPS_SQL)
        rollups = cur.rowcount
        cur.execute(LAY_OUT_AGENT_ROLLUPS_SQL)
        agent_rollups = cur.rowcount
        cur.execute("DROP TABLE bench_rollups")
        timings["rollup"] = time.perf_counter() - began
        print(
            f"  rollups: {rollups:,} per-session and {agent_rollups:,} per-agent rows written in hour order in "
            f"{timings['rollup']:.1f} s"
        )

        began = time.perf_counter()
        cur.execute("SET LOCAL maintenance_work_mem = '1GB'")
        cur.execute("SET LOCAL max_parallel_maintenance_workers = 2")
        for statement in restore:
            cur.execute(statement)
        timings["indexes"] = time.perf_counter() - began
        print(f"  indexes and constraints rebuilt ({len(restore)}) in {timings['indexes']:.1f} s")
        if schema_fingerprint(cur, BULK_TABLES) != before:
            raise RuntimeError("the indexes and constraints after the load differ from the migrated schema")
        conn.commit()

    with psycopg.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        for table in BULK_TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        conn.execute("CHECKPOINT")  # so the timed part does not pay for the load's dirty pages
        timings["vacuum"] = time.perf_counter() - began
        print(f"  VACUUM ANALYZE and CHECKPOINT in {timings['vacuum']:.1f} s")
        size = conn.execute(
            "SELECT pg_total_relation_size('usage_usageevent'), pg_total_relation_size('usage_usagerollup')"
        ).fetchone()
    return {"timings": timings, "sessions": session_count, "events_bytes": size[0], "rollup_bytes": size[1]}


# --- measuring invoices -----------------------------------------------------------------------------------


def period_stats(period_start: date, period_end: date) -> dict[str, Any]:
    """Rollup rows, (tenant, meter, provider, model) groups and events inside each tenant's local month;
    ``per_tenant`` counts the per-agent rollup rows, which invoicing reads."""
    from django.db import connection

    in_period = """
        hour >= (%(start)s::date)::timestamp AT TIME ZONE t.timezone
        AND hour < (%(end)s::date)::timestamp AT TIME ZONE t.timezone
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*), count(DISTINCT (r.tenant_id, r.meter, r.provider, r.model)), sum(r.event_count)
            FROM usage_usagerollup r JOIN tenants_tenant t ON t.id = r.tenant_id WHERE {in_period}
            """,  # noqa: S608 - a constant fragment
            {"start": period_start, "end": period_end},
        )
        rows, groups, meter_events = cursor.fetchone()
        cursor.execute(
            f"""
            SELECT r.tenant_id, count(*) FROM usage_agentrollup r JOIN tenants_tenant t ON t.id = r.tenant_id
            WHERE {in_period} GROUP BY 1
            """,  # noqa: S608 - a constant fragment
            {"start": period_start, "end": period_end},
        )
        per_tenant = dict(cursor.fetchall())
    return {
        "rollup_rows": rows,
        "agent_rollup_rows": sum(per_tenant.values()),
        "groups": groups,
        "meter_events": meter_events,
        "per_tenant": per_tenant,
    }


def backend_cpu_seconds(pid: int | None) -> float | None:
    """CPU time of a PostgreSQL backend on this machine (from /proc), or None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Meter:
    """Wall time, this process's CPU time, the database backend's CPU time and SQL statements of a phase.

    The machine may be shared, so CPU times are reported beside wall time: they do not grow when other
    processes compete for the cores."""

    def __init__(self) -> None:
        from django.db import connection

        connection.ensure_connection()
        self.backend = connection.connection.info.backend_pid
        self.sql = SqlTimer()

    def __enter__(self) -> Meter:
        from django.db import connection

        self._wrapper = connection.execute_wrapper(self.sql)
        self._wrapper.__enter__()
        self.load = os.getloadavg()[0]
        self._cpu = time.process_time()
        self._db = backend_cpu_seconds(self.backend)
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        db = backend_cpu_seconds(self.backend)
        self.db_cpu = db - self._db if db is not None and self._db is not None else None
        self.load = max(self.load, os.getloadavg()[0])
        self._wrapper.__exit__(*exc)

    def summary(self) -> dict[str, Any]:
        return {
            "wall": self.wall,
            "py_cpu": self.cpu,
            "db_cpu": self.db_cpu,
            "sql": self.sql.seconds,
            "queries": self.sql.queries,
            "load": self.load,
        }


def time_invoicing(specs: list[TenantSpec], period_start: date, profile: bool) -> dict[str, Any]:
    from billing import invoicing

    profiler = cProfile.Profile() if profile else None
    ids: list[int] = []
    per_invoice: list[tuple[float, int]] = []
    with Meter() as generate:
        if profiler:
            profiler.enable()
        for spec in specs:
            began = time.perf_counter()
            ids.append(invoicing.generate_invoice(spec.pk, period_start).pk)
            per_invoice.append((time.perf_counter() - began, spec.pk))
        if profiler:
            profiler.disable()
    with Meter() as finalize:
        for invoice_id in ids:
            invoicing.finalize_invoice(invoice_id, force=True)
    result: dict[str, Any] = {
        "generate": generate.summary(),
        "finalize": finalize.summary(),
        "per_invoice": per_invoice,
    }
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(25)
        result["profile"] = out.getvalue()
    return result


def check_invoices(specs: list[TenantSpec], period_start: date, rng: random.Random) -> list[str]:
    """Three tenants' usage lines (and unmatched usage) against a sum over their raw events: exact."""
    from django.db import connection

    from billing import periods
    from billing.models import Invoice
    from tenants.models import Tenant
    from usage import rollups as selectors

    chosen = [specs[0], *rng.sample(specs[1:], 2)]  # always the +05:30 tenant, and two at random
    report = []
    for spec in chosen:
        tenant = Tenant.objects.get(pk=spec.pk)
        invoice = Invoice.objects.get(tenant=tenant, period_start=period_start)
        begin = periods.local_midnight(invoice.period_start, tenant.timezone)
        finish = periods.local_midnight(invoice.period_end, tenant.timezone)
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT u.key, e.provider, e.model, sum(u.value::numeric)
                FROM usage_usageevent e CROSS JOIN LATERAL jsonb_each_text(e.usage) AS u
                WHERE e.tenant_id = %s AND e.timestamp >= %s AND e.timestamp < %s
                GROUP BY 1, 2, 3
                """,
                [tenant.pk, begin, finish],
            )
            expected = {(m, p, mo): q for m, p, mo, q in cursor.fetchall()}
            cursor.execute(
                """
                SELECT count(*) FILTER (WHERE timestamp >= %s AND timestamp < %s),
                       count(*) FILTER (WHERE timestamp < %s OR timestamp >= %s),
                       count(DISTINCT agent_id) FILTER (WHERE timestamp >= %s AND timestamp < %s)
                FROM usage_usageevent WHERE tenant_id = %s
                """,
                [begin, finish, begin, finish, begin, finish, tenant.pk],
            )
            inside, outside, agents = cursor.fetchone()
        billed: dict[tuple, Decimal] = defaultdict(Decimal)
        for line in invoice.lines.filter(kind="usage"):
            billed[(line.meter, line.provider, line.model)] += line.quantity
        for item in invoice.unmatched:
            billed[(item["meter"], item["provider"], item["model"])] += Decimal(item["quantity"])
        agent_line = invoice.lines.filter(kind="agent_fee").first()
        problems = [f"rollup drift {d}" for d in selectors.rollup_drift(tenant.pk)[:3]]
        if dict(billed) != expected:
            keys = set(billed) | set(expected)
            problems += [f"{k}: invoice {billed.get(k)} ≠ events {expected.get(k)}" for k in sorted(keys)
                        if billed.get(k) != expected.get(k)]  # fmt: skip
        if agent_line is None or agent_line.quantity != agents:
            problems.append(f"active agents: invoice {agent_line and agent_line.quantity} ≠ events {agents}")
        if problems:
            raise AssertionError(f"{tenant.slug} ({tenant.timezone}): " + "; ".join(problems))
        report.append(
            f"{tenant.slug} ({tenant.timezone}): {len(expected)} usage groups, {inside:,} events in the local "
            f"month (+{outside:,} just outside it), {agents} active agent{'s' * (agents != 1)}, total {invoice.total} USD: "
            "invoice = Σ raw events exactly; no rollup drift"
        )
    numbers = sorted(Invoice.objects.exclude(number=None).values_list("number", flat=True))
    year = numbers[0][3:7] if numbers else ""
    if numbers != [f"ML-{year}-{n:06d}" for n in range(1, len(specs) + 1)]:
        raise AssertionError(f"invoice numbers are not gapless: {numbers[:3]} … {numbers[-3:]}")
    report.append(f"numbers {numbers[0]} … {numbers[-1]}: gapless")
    return report


# --- orchestration ----------------------------------------------------------------------------------------


def server_url() -> tuple[str, str]:
    """(a URL of the server's ``postgres`` database, how it was found)."""
    import psycopg

    named = os.environ.get("DATABASE_URL", "")
    if named:
        return with_database(named, "postgres"), "DATABASE_URL"
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=3).close()
        return LOCAL_SERVER, "127.0.0.1:5432 (DATABASE_URL unset)"
    except psycopg.OperationalError:
        pass
    sys.path.insert(0, str(BASE))
    from config import devservices

    pgdata = BASE / ".devdata" / "bench-invoice-pg"
    print(f"DATABASE_URL is unset and nothing answers on 127.0.0.1:5432: embedded PostgreSQL in {pgdata} …")
    return devservices.start_postgres(pgdata, dbname="postgres"), f"embedded ({pgdata})"


BYTES_PER_EVENT = 1200  # measured: 570 B of events and their indexes, 30 B of rollups, plus WAL and slack


def check_disk(admin_url: str, events: int) -> None:
    """Refuse to start a size whose data would not fit on the server's disk (when the server is local)."""
    import psycopg

    try:
        with psycopg.connect(admin_url) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        free = shutil.disk_usage(data_dir).free
    except (psycopg.Error, OSError):  # not a superuser, or a server on another machine: cannot tell
        return
    need = events * BYTES_PER_EVENT
    if free < need:
        raise SystemExit(
            f"{events:,} events need about {need / 2**30:.1f} GiB on the database server's disk; "
            f"{data_dir} has {free / 2**30:.1f} GiB free"
        )


def setup_django(bench_url: str) -> None:
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(BASE))
    import django

    django.setup()


def previous_month(today: date) -> date:
    first = today.replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


def fit_per_invoice(per_invoice: list[tuple[float, int]], rows: dict[int, int]) -> tuple[float, float]:
    """Least-squares fit of invoice time against the tenant's rollup rows: (fixed ms, µs per row)."""
    xs = [rows.get(pk, 0) for _, pk in per_invoice]
    ys = [seconds for seconds, _ in per_invoice]
    slope, intercept = (
        statistics.linear_regression(xs, ys) if len(set(xs)) > 1 else (0.0, statistics.mean(ys))
    )
    return intercept * 1000, slope * 1e6


def run_size(args, events: int, admin_url: str, bench_url: str, django_ready: bool) -> dict[str, Any]:
    from_month = args.month
    period_end = date(from_month.year + from_month.month // 12, from_month.month % 12 + 1, 1)
    print(f"\n== {events:,} events, {args.tenants} tenants, {from_month:%B %Y} ==", flush=True)
    if django_ready:
        from django.db import connections

        connections.close_all()
    recreate_database(admin_url, args.db_name)
    check_disk(admin_url, events)
    migrate_s = migrate(bench_url)
    print(f"  scratch database {args.db_name} created and migrated in {migrate_s:.1f} s")
    if not django_ready:
        setup_django(bench_url)

    rng = random.Random(args.seed)
    specs = tenant_specs(args.tenants, events, rng)
    began = time.perf_counter()
    create_fixtures(specs, from_month)
    loaded = load_usage(bench_url, specs, from_month, period_end, args.seed)
    setup_s = time.perf_counter() - began
    print(f"  set-up: {setup_s:.1f} s ({events / setup_s:,.0f} events/s)", flush=True)

    stats = period_stats(from_month, period_end)
    print(
        f"  in the period: {stats['rollup_rows']:,} per-session and {stats['agent_rollup_rows']:,} per-agent rollup "
        f"rows, {stats['groups']:,} (tenant, meter, provider, "
        f"model) groups; events {loaded['events_bytes'] / 2**30:.2f} GiB, rollups "
        f"{loaded['rollup_bytes'] / 2**20:.0f} MiB"
    )
    measured = time_invoicing(specs, from_month, args.profile)
    n = len(specs)
    for phase in ("generate", "finalize"):
        m = measured[phase]
        db_cpu = f"{m['db_cpu']:.2f} s" if m["db_cpu"] is not None else "n/a"
        print(
            f"  {phase}_invoice × {n}: {m['wall']:.2f} s ({n / m['wall']:.1f} invoices/s); {m['queries']:,} SQL "
            f"statements, {m['sql']:.2f} s waiting on SQL; CPU: Python {m['py_cpu']:.2f} s, PostgreSQL "
            f"backend {db_cpu}; load average ≤ {m['load']:.1f}"
        )
        if phase == "generate":
            per = sorted(measured["per_invoice"])
            slowest_s, slowest_pk = per[-1]
            fixed_ms, per_row_us = fit_per_invoice(per, stats["per_tenant"])
            print(
                f"    per invoice: median {statistics.median(s for s, _ in per) * 1000:.0f} ms, slowest "
                f"{slowest_s * 1000:.0f} ms (a tenant with {stats['per_tenant'].get(slowest_pk, 0):,} per-agent rollup "
                f"rows; the largest has {max(stats['per_tenant'].values()):,}); least-squares fit: "
                f"{fixed_ms:.0f} ms {'+' if per_row_us >= 0 else '−'} {abs(per_row_us):.1f} µs per per-agent rollup row of the "
                "tenant's month"
            )
    for line in check_invoices(specs, from_month, random.Random(args.seed + events)):
        print(f"  check: {line}")
    if measured.get("profile"):
        print("\n  cProfile of the generate loop:\n" + measured["profile"])
    g, f = measured["generate"], measured["finalize"]
    return {
        "events": events,
        "sessions": loaded["sessions"],
        "setup": setup_s,
        **{f"setup_{k}": v for k, v in loaded["timings"].items()},
        "rollup_rows": stats["rollup_rows"],
        "agent_rollup_rows": stats["agent_rollup_rows"],
        "groups": stats["groups"],
        "largest_tenant_rollup_rows": max(stats["per_tenant"].values()),
        **{f"generate_{k}": v for k, v in g.items()},
        **{f"finalize_{k}": v for k, v in f.items()},
    }


def parse_month(text: str) -> date:
    return datetime.strptime(text, "%Y-%m").date()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=parse_count,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="event counts to run, e.g. 1M 10M (the default) or 500k",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200k events")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument(
        "--month",
        type=parse_month,
        default=previous_month(datetime.now(UTC).date()),
        help="the billed month, YYYY-MM (default: last month)",
    )
    parser.add_argument("--seed", type=int, default=20261)
    parser.add_argument("--profile", action="store_true", help="cProfile the generate loop and print it")
    parser.add_argument("--db-name", default="meterline_bench_invoice")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database of the last size")
    args = parser.parse_args()
    if args.quick:
        args.events = [200_000]
    if args.db_name in PROTECTED_DATABASES:
        parser.error(f"refusing to use {args.db_name!r} as a scratch database")
    if args.tenants < 3:
        parser.error("--tenants must be at least 3")
    return args


def print_report(args, rows: list[dict[str, Any]], server: str, pg_version: str) -> None:
    print(f"\n== Invoice generation: {args.tenants} tenants, {args.month:%B %Y} ==")
    print(
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, PostgreSQL {pg_version} ({server})"
    )
    header = (
        f"{'events':>12} {'sessions':>9} {'set-up s':>9} {'rollup rows':>12} {'groups':>7} "
        f"{'generate s':>11} {'(CPU py+db)':>12} {'finalize s':>11} {'(CPU py+db)':>12} {'inv/s':>6} {'load':>5}"
    )
    print(header)
    print("-" * len(header))

    def cpu(r: dict[str, Any], phase: str) -> str:
        db = r[f"{phase}_db_cpu"]
        return f"{r[f'{phase}_py_cpu']:.1f}+{db:.1f}" if db is not None else f"{r[f'{phase}_py_cpu']:.1f}+?"

    for r in rows:
        print(
            f"{r['events']:>12,} {r['sessions']:>9,} {r['setup']:>9.1f} {r['rollup_rows']:>12,} {r['groups']:>7,} "
            f"{r['generate_wall']:>11.2f} {cpu(r, 'generate'):>12} {r['finalize_wall']:>11.2f} "
            f"{cpu(r, 'finalize'):>12} {args.tenants / r['generate_wall']:>6.1f} "
            f"{max(r['generate_load'], r['finalize_load']):>5.1f}"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"from {first['events']:,} to {last['events']:,} events (×{last['events'] / first['events']:.0f}): "
            f"rollup rows ×{last['rollup_rows'] / first['rollup_rows']:.1f}, groups "
            f"×{last['groups'] / first['groups']:.2f}, generate ×{last['generate_wall'] / first['generate_wall']:.2f}, "
            f"finalize ×{last['finalize_wall'] / first['finalize_wall']:.2f}"
        )
    at_target = [r for r in rows if r["events"] >= TARGET_EVENTS]
    for r in at_target:
        total = r["generate_wall"] + r["finalize_wall"]
        verdict = "met" if total <= TARGET_SECONDS else "NOT met"
        print(
            f"target (DESIGN §9): a month of {r['events']:,} events invoiced in ≤ {TARGET_SECONDS:.0f} s: "
            f"generate {r['generate_wall']:.1f} s + finalize {r['finalize_wall']:.1f} s = {total:.1f} s: {verdict}"
        )
    if not at_target:
        print(
            f"(the DESIGN §9 target is for {TARGET_EVENTS:,} events: run without --events/--quick to check it)"
        )


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill PID` still drops the scratch database
    os.environ.update(
        DEBUG="0",  # DEBUG would keep every query in memory and slow the timed loop
        SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32),
        CELERY_BROKER_URL="memory://",
        LOG_LEVEL="WARNING",
    )
    admin_url, server = server_url()
    bench_url = with_database(admin_url, args.db_name)
    import psycopg

    with psycopg.connect(admin_url) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    print(f"PostgreSQL {pg_version} via {server}; scratch database {args.db_name}", flush=True)
    rows: list[dict[str, Any]] = []
    django_ready = False
    try:
        for events in args.events:
            rows.append(run_size(args, events, admin_url, bench_url, django_ready))
            django_ready = True
    finally:
        if django_ready:
            from django.db import connections

            connections.close_all()
        if not args.keep:
            recreate_database(admin_url, args.db_name, create=False)
            print(f"\nscratch database {args.db_name} dropped")
    print_report(args, rows, server, pg_version)
    print("\nJSON: " + json.dumps(rows, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
