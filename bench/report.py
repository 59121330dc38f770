"""The benchmarks' one report format: a header (what ran, on which machine), tables of figures, and the
DESIGN §9 targets as measure, figure, unit, target and verdict, with the load average at the start and end."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    # The limit or peer measured in the same run (e.g. the bare COPY's rate beside the API's), if any.
    peer: str = ""


# Every run's figures are also kept here, one entry per benchmark and measure, for ``python -m bench.summary``
# (``make bench``'s one comparable report). Not committed; bench/baseline.json holds the "before" figures.
RESULTS = Path(__file__).resolve().parent.parent / ".bench" / "results.json"


def commit() -> str:
    """The checkout's short commit (with "+" when it has uncommitted changes), or "" outside git."""
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        head = subprocess.run(  # noqa: S603 - git, with constant arguments
            [git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - git, with constant arguments
            [git, "status", "--porcelain", "--untracked-files=no"], capture_output=True
        )
        return head + ("+" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def load(path: Path = RESULTS) -> dict[str, dict[str, dict[str, Any]]]:
    """The figures kept in ``path`` (benchmark title → measure → figure); none when it is missing or
    unreadable, and said so when it is there but not JSON (the next ``record`` starts it afresh)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        print(f"(no figures read from {path}: {exc})", file=sys.stderr)
        return {}


def record(
    title: str, figures: list[Figure], load_start: float, load_end: float, path: Path = RESULTS
) -> None:
    """Keep ``figures`` as the latest run of benchmark ``title`` (replacing its earlier run's, keeping the other
    benchmarks')."""
    results = load(path)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    run = {"when": when, "commit": commit(), "load": f"{load_start:.1f} → {load_end:.1f}"}
    results[title] = {figure.measure: {**asdict(figure), **run} for figure in figures}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


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
        load_end = load_average()
        print(f"load average: {self.load_start:.1f} at the start, {load_end:.1f} at the end")
        record(self.title, figures, self.load_start, load_end)


def progress(message: str, began: float) -> None:
    if sys.stdout.isatty():
        print(f"\r  {message} ({time.perf_counter() - began:.0f} s)", end="", flush=True)


def progress_done(message: str, seconds: float) -> None:
    if sys.stdout.isatty():
        print("\r\033[K", end="")
    print(f"  {message} in {seconds:.1f} s", flush=True)
