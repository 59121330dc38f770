"""The monthly partitions of ``usage_usageevent`` (decision 023): which exist, and creating the coming ones.

Events are partitioned by their own timestamp, in UTC calendar months. Beat creates the partitions of the correction
window (35 days back) and of the next ``EVENT_PARTITIONS_AHEAD`` months every day (``usage.tasks``), so ingest finds
its month's partition. An event for a month without one is never refused: it lands in the DEFAULT partition, and
creating that month's partition later moves it out. Ingest never creates partitions itself: DDL in the request path
would take locks every concurrent batch then waits behind.

A partition is created as a plain table and then attached: ATTACH holds only a SHARE UPDATE EXCLUSIVE lock on the
partitioned table, so ingest into the other months goes on (``CREATE TABLE … PARTITION OF`` would take an ACCESS
EXCLUSIVE one, and queue every batch behind any long read). The DEFAULT partition is locked meanwhile, and the
rows it holds for the month are moved in the same transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction

from usage.validation import MAX_PAST

PARENT = "usage_usageevent"
DEFAULT = f"{PARENT}_default"
# One creator at a time (beat, a restore, the command): two would race between "is it there?" and ATTACH.
_LOCK = 0x7573_6167  # pg_advisory_xact_lock key, "usag"


def month_start(moment: datetime) -> datetime:
    """The first instant of the UTC calendar month ``moment`` falls in."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(month: datetime, months: int) -> datetime:
    index = month.year * 12 + month.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{PARENT}_y{month:%Y}m{month:%m}"


@dataclass(frozen=True)
class Partition:
    """A partition and its bounds: ``start`` None is MINVALUE (the legacy partition of usage.0012); both None is
    the DEFAULT partition."""

    name: str
    start: datetime | None
    end: datetime | None

    @property
    def is_default(self) -> bool:
        return self.end is None

    def holds(self, month: datetime) -> bool:
        """Whether the whole of ``month`` belongs to this partition."""
        return (
            not self.is_default
            and (self.start is None or self.start <= month)
            and add_months(month, 1) <= self.end
        )


_BOUND = re.compile(r"'([^']+)'")


def partitions() -> list[Partition]:
    """Every partition of the events table, oldest first, the DEFAULT one last."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None))
            continue
        values = [datetime.fromisoformat(v).astimezone(UTC) for v in _BOUND.findall(bound)]
        start, end = (None, values[0]) if "MINVALUE" in bound else values
        found.append(Partition(name, start, end))
    return sorted(found, key=lambda p: (p.is_default, p.end or datetime.max.replace(tzinfo=UTC)))


def ensure_partitions(now: datetime, ahead: int | None = None) -> list[str]:
    """Create the partitions missing from the month 35 days before ``now`` to ``ahead`` months after its month
    (``EVENT_PARTITIONS_AHEAD`` by default); returns the names created."""
    ahead = settings.EVENT_PARTITIONS_AHEAD if ahead is None else ahead
    month, last = month_start(now - MAX_PAST), add_months(month_start(now), ahead)
    created = []
    while month <= last:
        if create_month(month):
            created.append(partition_name(month))
        month = add_months(month, 1)
    return created


def create_month(month: datetime, *, rows_from_file=None) -> bool:
    """Create and attach the partition of ``month`` unless a partition already holds it; returns whether it did.
    The DEFAULT partition's rows of that month move into it. ``rows_from_file`` (usage.archive's restore) is called
    with the new table's name, to fill it, before it is attached."""
    end = add_months(month, 1)
    name = partition_name(month)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        # no DDL on a table with foreign-key checks still pending in the transaction
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        if any(p.holds(month) for p in partitions()):
            return False
        cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
        # LIKE copies the columns in their order, their defaults and the checks; ATTACH adds the indexes, the
        # primary key, the foreign key and the trigger. The range check spares ATTACH its scan of the rows.
        cursor.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK (timestamp >= %s AND timestamp < %s)",
            [month, end],
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE timestamp >= %s AND timestamp < %s RETURNING *) "  # noqa: S608 - names are ours
            f"INSERT INTO {name} SELECT * FROM moved",
            [month, end],
        )
        if rows_from_file is not None:
            rows_from_file(name)
        cursor.execute(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [month, end]
        )
        cursor.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")
    return True
