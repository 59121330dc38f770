"""Loads generated traffic into a migrated scratch database the fast way, with both rollups as ingestion
would have built them: COPY without indexes, roll up each piece from exactly the rows it inserted, write the
rollups in hour order, restore the indexes and constraints exactly, VACUUM ANALYZE, CHECKPOINT."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bench.measure import backend_cpu_seconds
from bench.report import progress, progress_done
from bench.scratch import detach_indexes, schema_fingerprint
from bench.traffic import Piece, conversations

EVENT_COLUMNS = (
    "tenant_id, agent_id, event_id, timestamp, session_id, provider, model, usage, metadata, source, "
    "received_at"
)
SESSION_COLUMNS = (
    "tenant_id, agent_id, session_id, started_at, ended_at, end_user_id, conversation_type, metadata, "
    "default_models, livekit_report_mode, first_usage_at, last_usage_at, created_at, updated_at"
)
ROLLUP_COLUMNS = "tenant_id, agent_id, session_id, meter, provider, model, hour, quantity, event_count"
BULK_TABLES = ["usage_usageevent", "usage_eventid", "usage_session", "usage_usagerollup", "usage_agentrollup"]

# The toolkit's one copy of ingestion's rollup (usage.ingest's insert statement; not imported, as it is
# written for one batch of one agent): each piece is COPYed into a temporary table and moved into
# usage_usageevent (their ids claimed in usage_eventid, as ingest claims them) by this statement, which rolls up
# exactly the rows the INSERT returned with the same tenant-local hour bucket. A session never spans two pieces
# and the rollup key includes the session, so these are the groups a single GROUP BY over all events would give
# (usage_eventid's primary key, kept during the load, refuses a duplicate). The rollups go to a staging table first and are then written in hour
# order, as ingestion appends them: each tenant's month is spread over the table as in production instead
# of packed together, which would flatter the reads being measured.
PIECE_SQL = f"""
WITH inserted AS (
    INSERT INTO usage_usageevent ({EVENT_COLUMNS})
    SELECT {EVENT_COLUMNS} FROM piece_events
    RETURNING tenant_id, agent_id, event_id, session_id, provider, model, timestamp, usage
),
claimed AS (
    INSERT INTO usage_eventid (tenant_id, event_id, timestamp) SELECT tenant_id, event_id, timestamp FROM inserted
)
INSERT INTO bench_rollups ({ROLLUP_COLUMNS})
SELECT i.tenant_id, i.agent_id, i.session_id, u.key, i.provider, i.model,
       date_trunc('hour', i.timestamp, %(tz)s), sum(u.value::numeric), count(*)
FROM inserted i CROSS JOIN LATERAL jsonb_each_text(i.usage) AS u
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""  # noqa: S608 - column lists are constants
STAGE_ROLLUPS_SQL = (
    f"CREATE UNLOGGED TABLE bench_rollups AS SELECT {ROLLUP_COLUMNS} FROM usage_usagerollup WITH NO DATA"  # noqa: S608
)
LAY_OUT_ROLLUPS_SQL = f"""
INSERT INTO usage_usagerollup ({ROLLUP_COLUMNS})
SELECT {ROLLUP_COLUMNS} FROM bench_rollups ORDER BY hour, tenant_id, agent_id, session_id, meter
"""  # noqa: S608 - column lists are constants
# The per-agent rollups are the per-session ones summed without the session, as ingestion keeps both from
# the same inserted rows; in hour order too.
LAY_OUT_AGENT_ROLLUPS_SQL = """
INSERT INTO usage_agentrollup (tenant_id, agent_id, meter, provider, model, hour, quantity, event_count)
SELECT tenant_id, agent_id, meter, provider, model, hour, sum(quantity), sum(event_count)
FROM bench_rollups GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY hour, tenant_id, agent_id, meter, provider, model
"""


class Clock:
    """Formats microsecond UNIX times as COPY timestamptz text, caching each minute's prefix."""

    def __init__(self) -> None:
        self._minutes: dict[int, str] = {}

    def text(self, micros: int) -> str:
        minute, rest = divmod(micros, 60_000_000)
        prefix = self._minutes.get(minute)
        if prefix is None:
            prefix = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%d %H:%M:")
            self._minutes[minute] = prefix
        seconds, fraction = divmod(rest, 1_000_000)
        return f"{prefix}{seconds:02d}.{fraction:06d}+00"


def copy_text(piece: Piece, sessions: list[str], chunk_rows: int = 4000) -> Iterator[str]:
    """COPY text of the piece's events, a few thousand rows at a time, with LiveKit-style derived ids;
    appends its sessions' COPY rows to ``sessions``."""
    spec = piece.spec
    clock = Clock().text
    sha1 = hashlib.sha1
    lines: list[str] = []
    for talk in conversations(piece):
        session = talk.session_id
        prefix = f"{spec.pk}\t{spec.agent_pks[talk.agent]}\t"
        for seq, (micros, lk_type, provider, model, usage) in enumerate(talk.events):
            event_id = f"lk:{lk_type}:{sha1(f'{session}/{seq}'.encode()).hexdigest()}"
            lines.append(
                f"{prefix}{event_id}\t{clock(micros)}\t{session}\t{provider}\t{model}\t{usage}\t"
                f'{{"livekit_type": "{lk_type}"}}\tlivekit_metrics\t'
                f"{clock(micros + 150_000 + (seq % 7) * 100_000)}\n"
            )
        # As ingestion leaves a LiveKit session that no PUT described: times from its first and last usage.
        first, last = clock(talk.events[0][0]), clock(talk.events[-1][0])
        sessions.append(
            f"{prefix}{session}\t\\N\t\\N\t\t{talk.conversation_type}\t{{}}\t{{}}\tmetrics\t{first}\t{last}\t"
            f"{first}\t{last}\n"
        )
        if len(lines) >= chunk_rows:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


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
            for chunk in copy_text(piece, sessions):
                copy.write(chunk)
        cur.execute(PIECE_SQL, {"tz": piece.spec.timezone})
        conn.commit()
        db_cpu = backend_cpu_seconds(conn.info.backend_pid) or 0.0
    return piece.events, "".join(sessions), len(sessions), time.process_time() - cpu, db_cpu


def load_usage(url: str, work: list[Piece]) -> dict[str, Any]:
    """COPY the pieces' events and sessions, derive both rollups, restore the indexes, VACUUM ANALYZE and
    CHECKPOINT; returns timings (copy, rollup, indexes, vacuum), counts and sizes.

    Pieces are generated, COPYed and rolled up by one worker process per CPU, each in its own transaction;
    everything else happens on one connection. (A failure half-way leaves a broken scratch database, which
    is dropped anyway.)
    """
    import psycopg

    timings: dict[str, float] = {}
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
            "SELECT (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('usage_usageevent')), "
            "pg_total_relation_size('usage_usagerollup')"
        ).fetchone()
    return {
        "timings": timings,
        "events": rows,
        "sessions": session_count,
        "events_bytes": size[0],
        "rollup_bytes": size[1],
    }
