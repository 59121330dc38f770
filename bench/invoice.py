"""``make bench-invoice``: the month-end invoicing run of DESIGN §9 and issue 13 part 6 (a script, not a test).

For each size (default: 10 M events across 1,000 tenants) it creates a scratch database, migrates it, and loads
one past month of LiveKit usage (bench.traffic: Deepgram nova-3 + gpt-4o-mini + Cartesia sonic-3 pipelines,
gpt-realtime with gpt-4o-transcribe, Gemini Live; tenant sizes skewed, shaped by time of day in each tenant's
zone) with both rollups as ingestion builds them (bench.loader).

Then, load-independent first: on a sample of tenants, in this process and rolled back, the SQL statements and
CPU seconds per tenant of the per-tenant path (``generate_invoice`` then ``finalize_invoice``, what the beat
queued per tenant before decision 026) and of the batched path (``billing.invoice_batches``, drafts then
finalization). Then the whole run end to end through real Celery worker processes against Redis
(``celery -A config worker --concurrency 2``, started here on the broker of ``CELERY_BROKER_URL``, its default
queue purged first): with ``--before``, the per-tenant tasks first (then the invoices are truncated); then the
batches (``billing.tasks.queue_batches``): every draft, then every finalization, each phase timed from queueing
to the last result. Reported: wall time, the workers' CPU seconds, the load average. Finally every
invoice is checked against its tenant's raw events summed in SQL here (usage quantities per meter, provider and
model, and active agents: exact), and the invoice numbers must run gapless. The scratch database
(``meterline_bench_invoice`` or ``--db-name``) is dropped afterwards, whatever happens. Database server: see
bench.scratch.database_server.

```
.venv/bin/python -m bench.invoice                          # 10 M events, 1,000 tenants (about 15 minutes)
.venv/bin/python -m bench.invoice --before                 # + the per-tenant tasks through the same workers
.venv/bin/python -m bench.invoice --events 1M 10M          # how it grows with events
.venv/bin/python -m bench.invoice --quick                  # 200 k events, 100 tenants: a smoke run
.venv/bin/python -m bench.invoice --tenants 100 --workers 1 --batch-size 25
```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
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

# Targets: DESIGN §9, a month of 10 M events across 100 tenants invoiced in ≤ 60 s; issue 13 part 6, the same
# across 1,000 tenants, generated and finalized through Celery workers.
TARGET_SECONDS = 60.0
TARGET_EVENTS = 10_000_000
TARGET_TENANTS = 1_000
SAMPLE_TENANTS = 20  # tenants whose statements and CPU time per invoice are counted in this process

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
                slug=f"bench-{i:04d}",
                name=f"Bench tenant {i:04d}",
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


def sample_paths(
    specs: list[TenantSpec], period_start: date, rng: random.Random
) -> dict[str, dict[str, Any]]:
    """Statements, CPU seconds and wall time per tenant of the per-tenant path and of the batched path on the
    same sample of tenants, each rolled back (nothing stays; no worker runs meanwhile): load-independent figures
    of what one invoice costs either way."""
    from django.db import transaction

    from billing import invoice_batches, invoicing

    sample = sorted(s.pk for s in rng.sample(specs, min(SAMPLE_TENANTS, len(specs))))
    found = {}
    for path in ("per tenant", "batched"):
        with transaction.atomic(), Meter() as meter:
            if path == "per tenant":
                for tenant_id in sample:
                    draft = invoicing.generate_invoice(tenant_id, period_start)
                    invoicing.finalize_invoice(draft.pk, force=True)
            else:
                for finalize in (False, True):
                    outcome = invoice_batches.invoice_batch(
                        period_start, sample, finalize=finalize, force=True
                    )
                    assert not outcome.failed, outcome
            transaction.set_rollback(True)
        found[path] = {k: v / len(sample) if isinstance(v, float | int) and k != "load" else v
                       for k, v in meter.summary().items()}  # fmt: skip
    return found


class Worker:
    """``celery -A config worker`` with ``concurrency`` processes on the scratch database, in its own process
    group; its CPU time is its processes' (they persist: the prefork pool keeps its children)."""

    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        command = [scratch.PYTHON, "-m", "celery", "-A", "config", "worker", "-c", str(concurrency)]
        command += ["-n", "bench-invoice@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter
            [*command, "--loglevel=WARNING"],
            cwd=scratch.BASE,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def wait_ready(self, app, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not app.control.ping(timeout=0.5):
            if self.proc.poll() is not None:
                raise RuntimeError("the Celery worker exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not answer a ping within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process of the worker's group (the main process and its pool)."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid:  # the process group
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def through_workers(worker: Worker, queue) -> dict[str, Any]:
    """Run ``queue()`` (it queues tasks and returns their results), wait for every result; wall time from the
    first task queued to the last result, the workers' CPU, the load average. (PostgreSQL's share is taken
    from the in-process sample: the workers' backends come and go with their connections.)"""
    cpu = worker.cpu_seconds()
    load = load_average()
    began = time.perf_counter()
    results = [r.get(timeout=1800) for r in queue()]
    wall = time.perf_counter() - began
    return {
        "wall": wall,
        "worker_cpu": worker.cpu_seconds() - cpu,
        "load": max(load, load_average()),
        "tasks": len(results),
        "results": results,
    }


def per_tenant_run(worker: Worker, specs: list[TenantSpec], period_start: date) -> dict[str, Any]:
    """The run as the beat queued it before decision 026: a task per tenant for the drafts, then a task per
    invoice for the finalizations."""
    from billing import tasks
    from billing.models import Invoice

    drafts = through_workers(
        worker, lambda: [tasks.generate_invoice.delay(s.pk, period_start.isoformat()) for s in specs]
    )
    ids = list(Invoice.objects.filter(period_start=period_start).values_list("pk", flat=True))
    finals = through_workers(worker, lambda: [tasks.finalize_invoice.delay(pk, force=True) for pk in ids])
    return {"drafts": drafts, "finalize": finals}


def batched_run(
    worker: Worker, specs: list[TenantSpec], period_start: date, size: int | None
) -> dict[str, Any]:
    """The run as the beat queues it now: a task per batch of tenants for the drafts, then for the
    finalizations (billing.tasks.queue_batches)."""
    from billing import tasks

    pairs = [(s.pk, period_start) for s in specs]
    drafts = through_workers(worker, lambda: tasks.queue_batches(pairs, size=size))
    finals = through_workers(worker, lambda: tasks.queue_batches(pairs, finalize=True, force=True, size=size))
    for phase in (drafts, finals):
        failed = [t for r in phase["results"] for t in r["failed"]]
        if failed:
            raise AssertionError(f"tenants whose invoice failed: {failed[:10]}")
    return {"drafts": drafts, "finalize": finals}


def forget_invoices() -> None:
    """Remove every invoice, its lines and events and the number counter (the scratch database only), so the
    batched run starts from where the per-tenant run started."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE billing_invoice, billing_invoiceline, billing_invoicenumbersequence, notifications_event "
            "CASCADE"
        )


def check_invoices(specs: list[TenantSpec], period_start: date, period_end: date) -> list[str]:
    """Every invoice against its tenant's raw events summed here in SQL over the tenant's local month: usage
    quantities per (meter, provider, model) on usage lines and unmatched usage, and active agents on the agent
    fee line: exact Decimal equality. And the invoice numbers run gapless."""
    from django.db import connection

    from billing.models import Invoice, InvoiceLine

    bounds = """
        e.timestamp >= (%(start)s::date)::timestamp AT TIME ZONE t.timezone
        AND e.timestamp < (%(end)s::date)::timestamp AT TIME ZONE t.timezone
    """
    expected: dict[int, dict[tuple, Decimal]] = defaultdict(dict)
    agents: dict[int, int] = {}
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute(
            f"""
            SELECT e.tenant_id, u.key, e.provider, e.model, sum(u.value::numeric)
            FROM usage_usageevent e JOIN tenants_tenant t ON t.id = e.tenant_id
            CROSS JOIN LATERAL jsonb_each_text(e.usage) AS u
            WHERE {bounds} AND e.retracted_at IS NULL GROUP BY 1, 2, 3, 4
            """,  # noqa: S608 - a constant fragment
            {"start": period_start, "end": period_end},
        )
        for tenant_id, meter, provider, model, quantity in cursor.fetchall():
            expected[tenant_id][(meter, provider, model)] = quantity
        cursor.execute(
            f"""
            SELECT e.tenant_id, count(DISTINCT e.agent_id) FROM usage_usageevent e
            JOIN tenants_tenant t ON t.id = e.tenant_id WHERE {bounds} AND e.retracted_at IS NULL GROUP BY 1
            """,  # noqa: S608 - a constant fragment
            {"start": period_start, "end": period_end},
        )
        agents = dict(cursor.fetchall())
    events_s = time.perf_counter() - began
    invoices = {i.tenant_id: i for i in Invoice.objects.filter(period_start=period_start)}
    billed: dict[int, dict[tuple, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    fee_agents: dict[int, Decimal] = {}
    for tenant_id, kind, meter, provider, model, quantity in InvoiceLine.objects.filter(
        invoice__period_start=period_start, kind__in=["usage", "agent_fee"]
    ).values_list("invoice__tenant_id", "kind", "meter", "provider", "model", "quantity"):
        if kind == "usage":
            billed[tenant_id][(meter, provider, model)] += quantity
        else:
            fee_agents[tenant_id] = fee_agents.get(tenant_id, Decimal(0)) + quantity
    problems = []
    for spec in specs:
        invoice = invoices.get(spec.pk)
        if invoice is None or invoice.status != "open":
            problems.append(f"{spec.slug}: {'no invoice' if invoice is None else invoice.status}")
            continue
        for item in invoice.unmatched:
            billed[spec.pk][(item["meter"], item["provider"], item["model"])] += Decimal(item["quantity"])
        got, want = dict(billed[spec.pk]), expected.get(spec.pk, {})
        if got != want:
            keys = sorted(set(got) | set(want))
            problems += [f"{spec.slug} {k}: invoice {got.get(k)} ≠ events {want.get(k)}" for k in keys
                         if got.get(k) != want.get(k)]  # fmt: skip
        if fee_agents.get(spec.pk, 0) != agents.get(spec.pk, 0):
            problems.append(
                f"{spec.slug}: active agents invoice {fee_agents.get(spec.pk)} ≠ events {agents.get(spec.pk)}"
            )
    numbers = sorted(i.number or "" for i in invoices.values())
    year = numbers[0][3:7] if numbers and numbers[0] else ""
    if numbers != [f"ML-{year}-{n:06d}" for n in range(1, len(specs) + 1)]:
        problems.append(f"invoice numbers are not gapless: {numbers[:3]} … {numbers[-3:]}")
    if problems:
        raise AssertionError(f"{len(problems)} problems: " + "; ".join(problems[:20]))
    groups = sum(len(v) for v in expected.values())
    return [
        f"all {len(specs):,} invoices = Σ their raw events exactly ({groups:,} (tenant, meter, provider, model) "
        f"groups and every tenant's active agents, summed from the events in {events_s:.0f} s)",
        f"numbers {numbers[0]} … {numbers[-1]}: gapless",
    ]


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


def run_size(args, events: int, admin_url: str, bench_url: str) -> dict[str, Any]:
    from_month = args.month
    period_end = date(from_month.year + from_month.month // 12, from_month.month % 12 + 1, 1)
    print(f"\n== {events:,} events, {args.tenants:,} tenants, {from_month:%B %Y} ==", flush=True)
    scratch.close_django()
    scratch.recreate_database(admin_url, args.db_name)
    check_disk(admin_url, events)
    env = scratch.app_env(bench_url, CELERY_BROKER_URL=args.broker, CELERY_RESULT_BACKEND=args.result_backend)
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
        f"rows, {stats['groups']:,} (tenant, meter, provider, model) groups; events "
        f"{loaded['events_bytes'] / 2**30:.2f} GiB, rollups {loaded['rollup_bytes'] / 2**20:.0f} MiB"
    )

    sample = sample_paths(specs, from_month, random.Random(args.seed + 1))
    for path, m in sample.items():
        print(
            f"  {path}, {SAMPLE_TENANTS} tenants in this process (rolled back), per tenant: {m['queries']:.1f} SQL "
            f"statements, CPU Python {m['py_cpu'] * 1000:.1f} ms + PostgreSQL "
            f"{(m['db_cpu'] or 0) * 1000:.1f} ms, wall {m['wall'] * 1000:.1f} ms; load average {m['load']:.1f}"
        )

    from config.celery import app

    scratch.close_django()  # the worker's connections are the only ones while it runs, but for this one's reads
    app.control.purge()
    worker = Worker(env, args.workers)
    runs = {}
    try:
        worker.wait_ready(app)
        if args.before:
            runs["per tenant"] = per_tenant_run(worker, specs, from_month)
            forget_invoices()
        runs["batched"] = batched_run(worker, specs, from_month, args.batch_size)
    finally:
        worker.stop()
    for path, run in runs.items():
        total = run["drafts"]["wall"] + run["finalize"]["wall"]
        print(f"  through {args.workers} worker processes, {path}: {total:.1f} s")
        for phase, m in run.items():
            print(
                f"    {phase}: {m['wall']:.1f} s, {m['tasks']:,} tasks; the workers' CPU {m['worker_cpu']:.1f} s; "
                f"load average ≤ {m['load']:.1f}"
            )
    for line in check_invoices(specs, from_month, period_end):
        print(f"  check: {line}")
    return {
        "events": events,
        "tenants": args.tenants,
        "sessions": loaded["sessions"],
        "setup": setup_s,
        "rollup_rows": stats["rollup_rows"],
        "agent_rollup_rows": stats["agent_rollup_rows"],
        "groups": stats["groups"],
        "sample": sample,
        "runs": {
            p: {ph: {k: v for k, v in m.items() if k != "results"} for ph, m in r.items()}
            for p, r in runs.items()
        },
    }


def parse_month(text: str) -> date:
    return datetime.strptime(text, "%Y-%m").date()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=scratch.parse_count,
        nargs="+",
        default=[TARGET_EVENTS],
        help="event counts to run, e.g. 10M (the default), 1M 10M, or 500k",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200k events, 100 tenants")
    parser.add_argument("--tenants", type=int, default=TARGET_TENANTS)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (--concurrency)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="tenants per task (billing.invoice_batches)"
    )
    parser.add_argument(
        "--before", action="store_true", help="also time the per-tenant tasks through the workers"
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("CELERY_BROKER_URL", ""),
        help="a Redis broker (default: CELERY_BROKER_URL); its default queue is purged",
    )
    parser.add_argument("--result-backend", default=os.environ.get("CELERY_RESULT_BACKEND", ""))
    parser.add_argument(
        "--month",
        type=parse_month,
        default=previous_month(datetime.now(UTC).date()),
        help="the billed month, YYYY-MM (default: last month)",
    )
    parser.add_argument("--seed", type=int, default=20261)
    parser.add_argument("--db-name", default="meterline_bench_invoice")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database of the last size")
    args = parser.parse_args()
    if args.quick:
        args.events, args.tenants = [200_000], 100
    scratch.scratch_name(parser, args.db_name)
    if args.tenants < 3:
        parser.error("--tenants must be at least 3")
    if not args.broker.startswith("redis") or not args.result_backend:
        parser.error(
            "a Redis broker and a result backend are needed (CELERY_BROKER_URL, CELERY_RESULT_BACKEND)"
        )
    return args


def print_report(report: Report, args, rows: list[dict[str, Any]], server: str, pg_version: str) -> None:
    report.header(
        f"{args.tenants:,} tenants, {args.month:%B %Y}; PostgreSQL {pg_version} ({server}); {args.workers} Celery "
        "worker processes"
    )
    columns = ["events", "tenants", "groups", "path", "stmts/tenant", "CPU ms/tenant (py+db)", "drafts s",
               "finalize s", "total s", "workers' CPU s", "load"]  # fmt: skip
    table = []
    for r in rows:
        for path in ("per tenant", "batched"):
            s = r["sample"][path]
            run = r["runs"].get(path)
            cells = [f"{r['events']:,}", f"{r['tenants']:,}", f"{r['groups']:,}", path, f"{s['queries']:.1f}",
                     f"{s['py_cpu'] * 1000:.0f}+{(s['db_cpu'] or 0) * 1000:.0f}"]  # fmt: skip
            if run:
                d, f = run["drafts"], run["finalize"]
                cells += [f"{d['wall']:.1f}", f"{f['wall']:.1f}", f"{d['wall'] + f['wall']:.1f}",
                          f"{d['worker_cpu'] + f['worker_cpu']:.0f}",
                          f"{max(d['load'], f['load']):.1f}"]  # fmt: skip
            else:
                cells += ["", "", "(not run)", "", ""]
            table.append(cells)
    print_table(columns, table)
    figures = []
    for r in rows:
        run = r["runs"]["batched"]
        total = run["drafts"]["wall"] + run["finalize"]["wall"]
        at_target = r["events"] >= TARGET_EVENTS and r["tenants"] >= TARGET_TENANTS
        figures.append(
            Figure(
                f"{r['tenants']:,} tenants, {r['events']:,} events generated and finalized",
                f"{total:.1f}",
                "s",
                f"≤ {TARGET_SECONDS:.0f} s at {TARGET_TENANTS:,} tenants, {TARGET_EVENTS:,} events",
                total <= TARGET_SECONDS if at_target else None,
                f"drafts {run['drafts']['wall']:.1f} s + finalize {run['finalize']['wall']:.1f} s"
                + ("" if at_target else " (below the target's size)"),
            )
        )
        before = r["runs"].get("per tenant")
        if before:  # the same run queued a task per tenant, as before decision 026: for comparison
            total = before["drafts"]["wall"] + before["finalize"]["wall"]
            figures.append(
                Figure(
                    f"the same with a task per tenant ({r['events']:,} events)",
                    f"{total:.1f}",
                    "s",
                    note=f"drafts {before['drafts']['wall']:.1f} s + finalize {before['finalize']['wall']:.1f} s",
                )
            )
    report.figures(figures)


def main() -> int:
    args = parse_args()
    scratch.exit_on_sigterm()
    report = Report("Invoicing run", "issue 13 part 6")
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
