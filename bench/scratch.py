"""The scratch database a benchmark runs in: which server, create and migrate it, bulk-load it without its
indexes and restore them exactly, point Django at it, and drop it afterwards whatever happens."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PROTECTED_DATABASES = {"meterline", "test_meterline", "postgres", "template0", "template1"}
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
EMBEDDED_PGDATA = BASE / ".devdata" / "bench-pg"


def parse_count(text: str) -> int:
    """An event count as given on the command line: 200k, 1M, 10_000_000."""
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    value = float(text[:-1] if scale > 1 else text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value * scale)


def scratch_name(parser: argparse.ArgumentParser, name: str) -> str:
    if name in PROTECTED_DATABASES:
        parser.error(f"refusing to use {name!r} as a scratch database")
    return name


def exit_on_sigterm() -> None:
    """``kill PID`` runs the clean-up (``finally``) too: gunicorn stopped, scratch database dropped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def database_server() -> Iterator[tuple[str, str]]:
    """(a URL of the server's ``postgres`` database, how it was found): the server of ``DATABASE_URL``;
    without it PostgreSQL on 127.0.0.1:5432 if one answers, else an embedded server in .devdata/bench-pg
    (DESIGN §1), stopped again at the end."""
    import psycopg

    named = os.environ.get("DATABASE_URL", "")
    if named:
        yield with_database(named, "postgres"), "DATABASE_URL"
        return
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=3).close()
    except psycopg.OperationalError:
        pass
    else:
        yield LOCAL_SERVER, "127.0.0.1:5432 (DATABASE_URL unset)"
        return
    sys.path.insert(0, str(BASE))
    from config import devservices

    print(
        f"DATABASE_URL is unset and nothing answers on 127.0.0.1:5432: embedded PostgreSQL in {EMBEDDED_PGDATA} …"
    )
    url = devservices.start_postgres(EMBEDDED_PGDATA, dbname="postgres")
    try:
        yield url, f"embedded ({EMBEDDED_PGDATA})"
    finally:
        devservices.stop_postgres(EMBEDDED_PGDATA)


def server_version(admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url) as conn:
        return conn.execute("SHOW server_version").fetchone()[0].split()[0]


def recreate_database(admin_url: str, name: str, create: bool = True) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    """Drop the scratch database; a failure is reported, not raised (clean-up carries on)."""
    try:
        recreate_database(admin_url, name, create=False)
        print(f"\nscratch database {name} dropped")
    except Exception as exc:
        print(f"warning: could not drop {name}: {exc}", file=sys.stderr)


def app_env(bench_url: str, **extra: str) -> dict[str, str]:
    """Settings for the app against the scratch database: production-like (DEBUG off, which would also
    keep every query in memory), no broker, quiet logs."""
    return {
        "DATABASE_URL": bench_url,
        "DEBUG": "0",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-" + os.urandom(24).hex(),
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def manage(env: dict[str, str], *args: str) -> str:
    """``manage.py`` with these settings; returns its output."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and manage.py
        [PYTHON, "manage.py", *args], cwd=BASE, env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def migrate(env: dict[str, str]) -> float:
    began = time.perf_counter()
    manage(env, "migrate", "--no-input", "-v", "0")
    return time.perf_counter() - began


def setup_django(env: dict[str, str]) -> None:
    """Django in this process, on the scratch database."""
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(BASE))
    import django

    django.setup()


def close_django() -> None:
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()


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
