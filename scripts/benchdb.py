"""Scratch-database plumbing shared by the benchmarks (bench_invoice, bench_portal): create and migrate a
database, bulk-load it without its indexes and restore them exactly, time SQL, format COPY text."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PROTECTED_DATABASES = {"meterline", "test_meterline", "postgres", "template0", "template1"}


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


class SqlTimer:
    """A Django execute_wrapper: time spent inside cursor.execute, and the number of statements."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.queries = 0

    def __call__(self, execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - began
            self.queries += 1


def decimal_text(value: int, places: int) -> str:
    """``value`` / 10**places as ingestion stores it (usage.ingest.quantity_text): no trailing zeros."""
    whole, fraction = divmod(value, 10**places)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{places}d}".rstrip("0")


def detach_indexes(cur, table: str) -> list[str]:
    """Drop the table's unique and foreign-key constraints and secondary indexes, the usual bulk-load
    practice: each index is then built once instead of maintained row by row, and no deferred FK check
    queues a trigger event per row. Returns the statements that restore them exactly, from the
    catalogue's own definitions (whatever migrations have added)."""
    cur.execute(
        """
        SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = %s::regclass AND contype IN ('u', 'f') ORDER BY contype DESC, conname
        """,
        [table],
    )
    constraints = cur.fetchall()
    cur.execute(
        """
        SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = %s::regclass AND NOT i.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
        ORDER BY 1
        """,
        [table],
    )
    indexes = cur.fetchall()
    for name, _, _ in constraints:
        cur.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f'DROP INDEX "{name}"')
    restore = [f'ALTER TABLE "{table}" ADD CONSTRAINT "{n}" {d}' for n, t, d in constraints if t == "u"]
    restore += [definition for _, definition in indexes]
    restore += [f'ALTER TABLE "{table}" ADD CONSTRAINT "{n}" {d}' for n, t, d in constraints if t == "f"]
    return restore


def migrate(bench_url: str) -> float:
    began = time.perf_counter()
    env = dict(os.environ, DATABASE_URL=bench_url)
    done = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=BASE,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - began


def progress(message: str, began: float) -> None:
    if sys.stdout.isatty():
        print(f"\r  {message} ({time.perf_counter() - began:.0f} s)", end="", flush=True)


def progress_done(message: str, seconds: float) -> None:
    if sys.stdout.isatty():
        print("\r\033[K", end="")
    print(f"  {message} in {seconds:.1f} s", flush=True)


def parse_count(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    value = float(text[:-1] if scale > 1 else text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value * scale)


def recreate_database(admin_url: str, name: str, create: bool = True) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def schema_fingerprint(cur, tables: list[str]) -> list[tuple]:
    """The indexes and constraints of ``tables``, as the catalogue defines them."""
    cur.execute(
        """
        SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = ANY(%(t)s::regclass[])
        UNION ALL
        SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = ANY(%(t)s::regclass[])
        ORDER BY 1, 2
        """,
        {"t": tables},
    )
    return cur.fetchall()


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
