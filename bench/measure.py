"""What the benchmarks measure besides wall time: percentiles, time in SQL, CPU time of a PostgreSQL backend
and the load average (this machine may be shared: CPU times move much less with other load than wall time)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` 0.95 for p95); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(round(share * len(ordered), 9))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def backend_cpu_seconds(pid: int | None) -> float | None:
    """CPU time of a PostgreSQL backend on this machine (from /proc), or None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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
