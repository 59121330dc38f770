"""The benchmarks' one report format: a header (what ran, on which machine), tables of figures, and the
DESIGN §9 targets as measure, figure, unit, target and verdict, with the load average at the start and end."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.measure import load_average


@dataclass
class Figure:
    """One measured figure against its DESIGN §9 target (``met`` None: shown for comparison only)."""

    measure: str
    value: str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores{f' ({model})' if model else ''}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def print_table(columns: list[str], rows: list[list], notes: tuple[str, ...] = (), align: str = "") -> None:
    """Cells as given (already formatted), a column's width its widest cell; ``align`` has an ``l`` or ``r``
    per column (default: the first column left-aligned, the others right-aligned)."""
    align = align or "l" + "r" * (len(columns) - 1)
    widths = [max(len(str(c)) for c in column) for column in zip(columns, *rows, strict=True)]

    def line(cells: list) -> str:
        parts = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    header = line(columns)
    print(header)
    print("-" * len(header))
    for row in rows:
        print(line(row))
    for note in notes:
        print(note)


class Report:
    """Started when the benchmark starts (for the load average at the start); prints at the end."""

    def __init__(self, title: str, targets: str = "DESIGN §9") -> None:
        self.title = title
        self.targets = targets
        self.load_start = load_average()

    def header(self, *details: str) -> None:
        print(f"\n== {self.title} ==")
        print(f"machine: {machine()}")
        for detail in details:
            print(detail)

    def figures(self, figures: list[Figure]) -> None:
        print()
        rows = []
        for f in figures:
            verdict = "" if f.met is None else ("met" if f.met else "NOT met")
            rows.append([f.measure, f.value, f.unit, f.target, verdict, f.note])
        print_table(["measure", "figure", "unit", f"target ({self.targets})", "", ""], rows, align="lrllll")
        print(f"load average: {self.load_start:.1f} at the start, {load_average():.1f} at the end")


def progress(message: str, began: float) -> None:
    if sys.stdout.isatty():
        print(f"\r  {message} ({time.perf_counter() - began:.0f} s)", end="", flush=True)


def progress_done(message: str, seconds: float) -> None:
    if sys.stdout.isatty():
        print("\r\033[K", end="")
    print(f"  {message} in {seconds:.1f} s", flush=True)
