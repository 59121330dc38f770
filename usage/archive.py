"""Retention of raw events (decision 023): months older than ``EVENT_RETENTION_MONTHS`` leave PostgreSQL for gzip'd
CSV files in ``EVENT_ARCHIVE_DIR``, and ``restore_month`` brings one back.

A month is exported with COPY (rows in id order, so a month always exports to the same bytes), read back from the
file (its rows counted by a CSV reader, its SHA-256 taken of the uncompressed text) and compared with the table's
count and the digest of what was written; only then is its partition detached and dropped, in a transaction that
counts its rows again under lock. A restore checks the file the same way, loads it into a new partition and
exports that again: the partition is attached only if it reads back as the same bytes.

What stays: rollups, sessions, per-call costs, invoices and ``usage_eventid``, so a resend of an archived event is
never stored again (usage.ingest) and a correction of one is refused as too old (usage.corrections). What goes:
anything that reads raw events of those months — ``verify_rollups`` checks only the months still held
(``held_since``), and the portal's session page lists no archived events.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.utils import timezone
from psycopg import sql

from usage.models import EventArchive, UsageEvent
from usage.partitions import PARENT, Partition, add_months, create_month, month_start, partitions
from usage.validation import MAX_PAST

MIN_RETENTION_MONTHS = 2  # every event within the 35-day correction window stays in PostgreSQL
_COLUMNS = [f.column for f in UsageEvent._meta.concrete_fields]
_CHUNK = 1 << 20


class ArchiveMismatch(RuntimeError):
    """A file, or a restored partition, does not read back as what was exported. Nothing was dropped or attached."""


@dataclass(frozen=True)
class Digest:
    rows: int
    sha256: str


def retention_cutoff(now: datetime) -> datetime:
    """Months before this instant are archived: the current month and ``EVENT_RETENTION_MONTHS`` before it stay."""
    months = settings.EVENT_RETENTION_MONTHS
    if months < MIN_RETENTION_MONTHS:
        raise ImproperlyConfigured(
            f"EVENT_RETENTION_MONTHS must be at least {MIN_RETENTION_MONTHS}: events can be corrected for 35 days"
        )
    return add_months(month_start(now), -months)


def held_since() -> datetime | None:
    """The start of the months whose raw events are all in PostgreSQL: after the newest month archived and not
    restored (None: nothing was archived)."""
    newest = (
        EventArchive.objects.filter(archived_at__isnull=False, restored_at__isnull=True)
        .order_by("-month")
        .values_list("month", flat=True)
        .first()
    )
    if newest is None:
        return None
    return add_months(datetime(newest.year, newest.month, 1, tzinfo=UTC), 1)


def archive_due(now: datetime) -> list[str]:
    """Archive every partition that ends before the retention cutoff, except months brought back by a restore
    (archived again only on request: ``archive_events --month``); returns the months archived (YYYY-MM)."""
    cutoff = retention_cutoff(now)
    restored = {
        m.strftime("%Y-%m")
        for m in EventArchive.objects.filter(restored_at__isnull=False).values_list("month", flat=True)
    }
    done = []
    for partition in partitions():
        if partition.is_default or partition.end > cutoff:
            continue
        if partition.start is not None and partition.start.strftime("%Y-%m") in restored:
            continue
        done += archive_partition(partition)
    return done


def archive_month(month: datetime, now: datetime) -> list[str]:
    """Archive the partition that holds ``month`` (a restored month, or one before the cutoff by hand). A partition
    that can still receive events (35 days) is refused: what arrived after its export would have nowhere to go."""
    found = [p for p in partitions() if p.holds(month)]
    if not found:
        raise LookupError(f"no partition holds {month:%Y-%m}")
    if found[0].end > now - MAX_PAST:
        raise LookupError(f"{found[0].name} still accepts events (up to 35 days late)")
    return archive_partition(found[0])


def archive_partition(partition: Partition) -> list[str]:
    """Export each month of ``partition`` that has events, check each file, then drop the partition."""
    first = partition.start or _first_month(partition.name)
    months = []
    month = first
    while month is not None and month < partition.end:
        digest = _export_month(partition.name, month)
        if digest.rows:
            months.append(month)
        month = add_months(month, 1)
    archived = {m.date() for m in months}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")  # a long read on the table: try again on the next run
        # no DDL on a table with foreign-key checks still pending in the transaction
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"LOCK TABLE {partition.name} IN SHARE MODE")
        cursor.execute(f"SELECT count(*) FROM {partition.name}")  # noqa: S608 - our partition's name
        (stored,) = cursor.fetchone()
        exported = sum(EventArchive.objects.filter(month__in=archived).values_list("rows", flat=True))
        if stored != exported:
            raise ArchiveMismatch(f"{partition.name} holds {stored} events, its files {exported}")
        cursor.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {partition.name}")
        cursor.execute(f"DROP TABLE {partition.name}")
        EventArchive.objects.filter(month__in=archived).update(archived_at=timezone.now(), restored_at=None)
    return [f"{m:%Y-%m}" for m in months]


def restore_month(month: datetime) -> EventArchive:
    """Bring an archived month back into PostgreSQL from its file, as a partition that reads back identical."""
    record = EventArchive.objects.get(month=month.date())
    path = Path(record.path)
    expected = Digest(record.rows, record.sha256)
    if (found := read_back(path)) != expected:
        raise ArchiveMismatch(f"{path} reads back as {found}, archived as {expected}")

    def fill(table: str) -> None:
        with connection.cursor() as cursor:
            copy_in = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER)").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
            )
            with gzip.open(path, "rb") as source, cursor.cursor.copy(copy_in) as copy:
                while chunk := source.read(_CHUNK):
                    copy.write(chunk)
            restored = _copy_out(cursor, _select(table))
        if Digest(_count(table), restored) != expected:
            raise ArchiveMismatch(f"{month:%Y-%m} restored does not read back as archived")

    if not create_month(month_start(month), rows_from_file=fill):
        raise ArchiveMismatch(f"a partition already holds {month:%Y-%m}")
    record.restored_at = timezone.now()
    record.save(update_fields=["restored_at"])
    return record


def read_back(path: Path) -> Digest:
    """The rows (by a CSV reader, header excluded) and the SHA-256 of the uncompressed text of an archive file."""
    with gzip.open(path, "rb") as source:
        hashing = _Hashing(source)
        with io.TextIOWrapper(hashing, encoding="utf-8", newline="") as text:
            rows = sum(1 for _ in csv.reader(text)) - 1
    return Digest(rows, hashing.digest.hexdigest())


def _export_month(table: str, month: datetime) -> Digest:
    """Write ``month`` of ``table`` to its file (through a temporary one), check it reads back as written, and
    record it; returns its digest (a month without events gets no file)."""
    rows = _count(table, month)
    if not rows:
        return Digest(0, "")
    directory = Path(settings.EVENT_ARCHIVE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"usage_events_{month:%Y-%m}.csv.gz"
    partial = path.with_suffix(".partial")
    with connection.cursor() as cursor, gzip.open(partial, "wb") as out:
        written = Digest(rows, _copy_out(cursor, _select(table, month), out))
    with open(partial, "rb") as done:
        os.fsync(done.fileno())
    if (found := read_back(partial)) != written:
        raise ArchiveMismatch(f"{partial} reads back as {found}, written as {written}")
    os.replace(partial, path)
    EventArchive.objects.update_or_create(
        month=month.date(), defaults={"path": str(path), "rows": rows, "sha256": written.sha256}
    )
    return written


def _select(table: str, month: datetime | None = None) -> sql.Composed:
    where = sql.SQL("")
    if month is not None:
        where = sql.SQL(" WHERE timestamp >= {} AND timestamp < {}").format(
            sql.Literal(month), sql.Literal(add_months(month, 1))
        )
    return sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)").format(
        sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), sql.Identifier(table), where
    )


def _copy_out(cursor, statement: sql.Composed, out=None) -> str:
    """Run a COPY … TO STDOUT, writing what it sends to ``out`` (if any); returns the SHA-256 of it."""
    digest = hashlib.sha256()
    with cursor.cursor.copy(statement) as copy:
        for chunk in copy:
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    return digest.hexdigest()


def _count(table: str, month: datetime | None = None) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    params = []
    if month is not None:
        query += sql.SQL(" WHERE timestamp >= %s AND timestamp < %s")
        params = [month, add_months(month, 1)]
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(cursor.cursor), params)
        return cursor.fetchone()[0]


def _first_month(table: str) -> datetime | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT min(timestamp) FROM {table}")  # noqa: S608 - our partition's name
        (first,) = cursor.fetchone()
    return month_start(first) if first else None


class _Hashing(io.RawIOBase):
    """A readable stream that hashes what is read through it."""

    def __init__(self, source) -> None:
        self.source, self.digest = source, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.source.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)
