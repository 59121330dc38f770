"""``make bench-invoice``: the invoicing benchmark of DESIGN §9 (a script, not a test).

For each size (default 1 M and 10 M events) it creates a scratch database, migrates it, and loads one past
month of LiveKit usage for 100 tenants (bench.traffic: Deepgram nova-3 + gpt-4o-mini + Cartesia sonic-3
pipelines, gpt-realtime with gpt-4o-transcribe, Gemini Live; shaped by time of day in each tenant's zone)
with both rollups as ingestion builds them (bench.loader).

It then times, in this process, ``billing.invoicing.generate_invoice`` for every tenant and month and
``finalize_invoice(force=True)`` for every invoice, prints wall time, invoices/s, the share spent waiting
on SQL, rollup rows and (tenant, meter, provider, model) groups, and checks three tenants' invoices against
a sum over their raw events (exact Decimal equality). Finally a table shows how the cost grows with size.
The scratch database (``meterline_bench_invoice`` or ``--db-name``) is dropped afterwards, whatever happens.
Database server: see bench.scratch.database_server.

    .venv/bin/python -m bench.invoice                    # 1 M and 10 M events (about 10 minutes)
    .venv/bin/python -m bench.invoice --events 1M        # one size
    .venv/bin/python -m bench.invoice --quick            # 200 k events, a smoke run
    .venv/bin/python -m bench.invoice --events 1M --profile   # + cProfile of generate_invoice
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import random
import shutil
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from bench import scratch
from bench.loader import load_usage
from bench.measure import SqlTimer, backend_cpu_seconds, load_average
from bench.report import Figure, Report, print_table
from bench.traffic import GEMINI_LIVE, OPENAI_REALTIME, PIPELINE, AgentSpec, TenantSpec, pieces

# Target from DESIGN §9: a month of 10 M events across 100 tenants invoiced in ≤ 60 s.
TARGET_SECONDS = 60.0
TARGET_EVENTS = 10_000_000

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
AGENT_KINDS = [PIPELINE] * 6 + [OPENAI_REALTIME] * 3 + [GEMINI_LIVE]  # how often an agent is of each kind
# Sessions may start up to this long before the local month and run past its end, so some events fall just
# outside the period on both sides and the month boundary (in the tenant's zone) is actually exercised.
SPILL = timedelta(hours=6)
BYTES_PER_EVENT = 1200  # measured: 570 B of events and their indexes, 30 B of rollups, plus WAL and slack


def tenant_specs(count: int, events: int, rng: random.Random) -> list[TenantSpec]:
    """``count`` tenants whose sizes are skewed (log-normal) and add up to exactly ``events``; a tenant's
    first agent has the most sessions, its second half as many, and so on."""
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
                slug=f"bench-{i:03d}",
                name=f"Bench tenant {i:03d}",
                timezone=TIMEZONES[i % len(TIMEZONES)],
                events=sizes[i],
                agents=[
                    AgentSpec(name, rng.choice(AGENT_KINDS), 1.0 / (slot + 1))
                    for slot, name in enumerate(names)
                ],
                always_on=rng.random() < 0.2,
                index=i,
            )
        )
    return specs


def month_traffic(specs: list[TenantSpec], start: date, end: date, seed: int) -> list:
    """The pieces of every tenant's month, from 6 h before its local start to 6 h after its local end."""
    work = []
    for spec in specs:
        zone = ZoneInfo(spec.timezone)
        first = datetime.combine(start, datetime.min.time(), tzinfo=zone) - SPILL
        last = datetime.combine(end, datetime.min.time(), tzinfo=zone) + SPILL
        work += pieces(spec, first, last, seed)
    return work


def create_fixtures(specs: list[TenantSpec], period_start: date) -> None:
    """Plan, provider rates, tenants, agents and subscriptions through the ORM (a few hundred rows)."""
    from billing.demo import create_demo_plan, create_demo_rates
    from billing.models import Subscription
    from tenants.models import Agent, Tenant

    create_demo_rates()
    plan = create_demo_plan()  # the plan of billing.demo.load_demo_billing (which also invoices)

    tenants = Tenant.objects.bulk_create(
        Tenant(
            name=s.name,
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
        Agent(tenant_id=s.pk, name=a.name, metadata={"kind": a.kind}) for s in specs for a in s.agents
    )
    by_tenant = defaultdict(list)
    for agent in agents:
        by_tenant[agent.tenant_id].append(agent.pk)
    for spec in specs:
        spec.agent_pks = by_tenant[spec.pk]
    Subscription.objects.bulk_create(
        Subscription(tenant_id=s.pk, plan=plan, starts_on=period_start - timedelta(days=61)) for s in specs
    )


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
        self.load = load_average()
        self._cpu = time.process_time()
        self._db = backend_cpu_seconds(self.backend)
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        db = backend_cpu_seconds(self.backend)
        self.db_cpu = db - self._db if db is not None and self._db is not None else None
        self.load = max(self.load, load_average())
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
    from usage import rollups

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
        problems = [f"rollup drift {d}" for d in rollups.rollup_drift(tenant.pk)[:3]]
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


def run_size(args, events: int, admin_url: str, bench_url: str) -> dict[str, Any]:
    from_month = args.month
    period_end = date(from_month.year + from_month.month // 12, from_month.month % 12 + 1, 1)
    print(f"\n== {events:,} events, {args.tenants} tenants, {from_month:%B %Y} ==", flush=True)
    scratch.close_django()
    scratch.recreate_database(admin_url, args.db_name)
    check_disk(admin_url, events)
    env = scratch.app_env(bench_url)
    migrate_s = scratch.migrate(env)
    print(f"  scratch database {args.db_name} created and migrated in {migrate_s:.1f} s")
    if "django" not in sys.modules:
        scratch.setup_django(env)

    rng = random.Random(args.seed)
    specs = tenant_specs(args.tenants, events, rng)
    began = time.perf_counter()
    create_fixtures(specs, from_month)
    loaded = load_usage(bench_url, month_traffic(specs, from_month, period_end, args.seed))
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
        type=scratch.parse_count,
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
    scratch.scratch_name(parser, args.db_name)
    if args.tenants < 3:
        parser.error("--tenants must be at least 3")
    return args


SIZE_COLUMNS = ["events", "sessions", "set-up s", "rollup rows", "groups", "generate s", "(CPU py+db)"]
SIZE_COLUMNS += ["finalize s", "(CPU py+db)", "inv/s", "load"]


def print_report(report: Report, args, rows: list[dict[str, Any]], server: str, pg_version: str) -> None:
    report.header(f"PostgreSQL {pg_version} ({server})")

    def cpu(r: dict[str, Any], phase: str) -> str:
        db = r[f"{phase}_db_cpu"]
        return f"{r[f'{phase}_py_cpu']:.1f}+{db:.1f}" if db is not None else f"{r[f'{phase}_py_cpu']:.1f}+?"

    print_table(
        SIZE_COLUMNS,
        [
            [
                f"{r['events']:,}",
                f"{r['sessions']:,}",
                f"{r['setup']:.1f}",
                f"{r['rollup_rows']:,}",
                f"{r['groups']:,}",
                f"{r['generate_wall']:.2f}",
                cpu(r, "generate"),
                f"{r['finalize_wall']:.2f}",
                cpu(r, "finalize"),
                f"{args.tenants / r['generate_wall']:.1f}",
                f"{max(r['generate_load'], r['finalize_load']):.1f}",
            ]
            for r in rows
        ],
    )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"from {first['events']:,} to {last['events']:,} events (×{last['events'] / first['events']:.0f}): "
            f"rollup rows ×{last['rollup_rows'] / first['rollup_rows']:.1f}, groups "
            f"×{last['groups'] / first['groups']:.2f}, generate ×{last['generate_wall'] / first['generate_wall']:.2f}, "
            f"finalize ×{last['finalize_wall'] / first['finalize_wall']:.2f}"
        )
    figures = []
    for r in rows:
        total = r["generate_wall"] + r["finalize_wall"]
        at_target = r["events"] >= TARGET_EVENTS
        figures.append(
            Figure(
                f"a month of {r['events']:,} events invoiced",
                f"{total:.1f}",
                "s",
                f"≤ {TARGET_SECONDS:.0f} s at {TARGET_EVENTS:,} events",
                total <= TARGET_SECONDS if at_target else None,
                f"generate {r['generate_wall']:.1f} s + finalize {r['finalize_wall']:.1f} s"
                + ("" if at_target else " (below the target's size: run without --events/--quick)"),
            )
        )
    report.figures(figures)


def main() -> int:
    args = parse_args()
    scratch.exit_on_sigterm()
    report = Report(f"Invoice generation: {args.tenants} tenants, {args.month:%B %Y}")
    rows: list[dict[str, Any]] = []
    with scratch.database_server() as (admin_url, server):
        bench_url = scratch.with_database(admin_url, args.db_name)
        pg_version = scratch.server_version(admin_url)
        print(f"PostgreSQL {pg_version} via {server}; scratch database {args.db_name}", flush=True)
        try:
            for events in args.events:
                rows.append(run_size(args, events, admin_url, bench_url))
        finally:
            scratch.close_django()
            if not args.keep:
                scratch.drop_database(admin_url, args.db_name)
    print_report(report, args, rows, server, pg_version)
    print("\nJSON: " + json.dumps(rows, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
