"""``make bench``'s one comparable report: every benchmark's figures, before and after.

Each benchmark keeps its latest figures in ``.bench/results.json`` (bench.report.record). This prints them
beside the "before" figures of ``bench/baseline.json`` (committed: the figures a change is measured against,
each with when, on which commit and at what load it was taken), with the limit or peer measured in the same
run, the target and the load average. A measure is matched by benchmark and measure name, which name the size
(events, tenants, clients, rate), so a figure is only ever compared with one of the same size.

    .venv/bin/python -m bench.summary                   # print the report
    .venv/bin/python -m bench.summary --save-baseline   # the latest figures become the "before" figures
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import RESULTS, load, print_table

BASELINE = Path(__file__).resolve().parent / "baseline.json"


def figure(entry: dict[str, Any] | None) -> str:
    """A figure with its unit, e.g. "16.5 ms"; "—" for none."""
    if not entry:
        return "—"
    return f"{entry['value']} {entry.get('unit', '')}".strip()


def when(entry: dict[str, Any] | None) -> str:
    if not entry:
        return ""
    return " ".join(part for part in (entry.get("when", ""), entry.get("commit", "")) if part)


def rows_of(latest: dict, baseline: dict) -> list[tuple[str, list[list[str]]]]:
    """One table per benchmark: its measures of the latest run first (in the order measured), then those
    only the baseline has (not measured since)."""
    tables = []
    for title in [*latest, *(t for t in baseline if t not in latest)]:
        now, before = latest.get(title, {}), baseline.get(title, {})
        rows = []
        for measure in [*now, *(m for m in before if m not in now)]:
            after, earlier = now.get(measure), before.get(measure)
            verdict = "" if not after or after.get("met") is None else ("met" if after["met"] else "NOT met")
            rows.append(
                [
                    measure,
                    figure(earlier),
                    figure(after),
                    (after or {}).get("peer", ""),
                    (after or earlier or {}).get("target", ""),
                    verdict,
                    f"{(earlier or {}).get('load', '') or '—'} / {(after or {}).get('load', '') or '—'}",
                    f"{when(earlier) or '—'} / {when(after) or 'not measured since'}",
                ]
            )
        tables.append((title, rows))
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-baseline", action="store_true", help="make the latest figures the baseline")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    args = parser.parse_args(argv)
    latest, baseline = load(args.results), load(args.baseline)
    if args.save_baseline:
        for title, measures in latest.items():
            baseline.setdefault(title, {}).update(measures)
        args.baseline.write_text(json.dumps(baseline, indent=1, ensure_ascii=False) + "\n")
        print(f"{sum(map(len, latest.values()))} figures saved to {args.baseline}")
        return 0
    if not latest and not baseline:
        print(f"No figures yet: run a benchmark (make bench-ingest, …); they are kept in {args.results}.")
        return 0
    print("== Benchmarks: before (bench/baseline.json) and after (the latest run of each) ==")
    for title, rows in rows_of(latest, baseline):
        print(f"\n{title}")
        print_table(
            [
                "measure",
                "before",
                "after",
                "peer in the same run",
                "target",
                "",
                "load before / after",
                "taken",
            ],
            rows,
            align="lrrlllll",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
