"""``make bench-ingest``: the ingestion benchmark of DESIGN §9 (a script, not a test).

It creates a scratch database, migrates it, issues agent keys, starts gunicorn on loopback and drives
``POST /api/v1/events`` with concurrent client processes:

1. batches: several clients post 1000-event batches back to back;
2. baseline, same run: the same number of rows of the same shape, batch size and concurrency go into the same
   table by a bare PostgreSQL COPY into a temp table + ``INSERT … ON CONFLICT DO NOTHING``; the ratio of
   events/s API / COPY is the figure DESIGN §9 asks for (1 and 2 are repeated with a share of resent events);
   the minimal endpoint of DESIGN §9 (bench.minimal: no Django, one statement per batch) takes the first phase's
   batches too: what a Python endpoint that only stores reaches here (decision 027);
3. single events: 20 clients post one-event requests, paced at a few rates per client, then back to back.

It prints events/s, latency percentiles, the server-side CPU per event and the ratios. Everything it starts is
stopped, and the scratch database dropped, whatever happens. Database: see bench.scratch.database_server.

    .venv/bin/python -m bench.ingest            # the full run (a few minutes)
    .venv/bin/python -m bench.ingest --quick    # a short smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import queue
import random
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import scratch
from bench.measure import percentile
from bench.minimal import store_claimed
from bench.report import Figure, Report, print_table
from bench.scratch import BASE, PYTHON
from bench.server import free_port, start_gunicorn, start_server, stop_gunicorn
from bench.traffic import PIPELINE, AgentSpec, Piece, TenantSpec, conversations

EVENTS_PATH = "/api/v1/events"

# Targets from DESIGN §9 (issue 13): batches at ≥ 0.9× the bare COPY; single events p99 ≤ 25 ms at 20 clients
# offering 100 requests/s in all; and where the single-event p99 crosses 50 ms (the saturation point).
TARGET_RATIO = 0.9
TARGET_SINGLE_P99_MS = 25.0
TARGET_SINGLE_RATE = 100.0
SATURATION_P99_MS = 50.0


SUBSCRIBE_TO_DEMO_PLAN = """
import datetime
from billing.demo import create_demo_plan, create_demo_rates
from billing.models import Subscription
from tenants.models import Tenant
create_demo_rates()
Subscription.objects.create(
    tenant=Tenant.objects.get(slug="bench"), plan=create_demo_plan(), starts_on=datetime.date(2020, 1, 1)
)
"""


def make_events(seed: int, prefix: str, count: int, now: float) -> list[dict[str, Any]]:
    """``count`` events as a LiveKit voice agent reports them (Deepgram + gpt-4o-mini + Cartesia pipeline
    sessions, bench.traffic) within the last day, as the API takes them: quantities as JSON numbers, two
    metadata keys. Deterministic for a given seed and ``now`` (only the ids depend on ``prefix``), so two
    phases can hold rows of exactly the same shape."""
    spec = TenantSpec("bench", "bench", "UTC", count, [AgentSpec("agent", PIPELINE, 1.0)])
    # Sessions start up to ``last`` and run on for their length: starting them 6 hours back keeps every
    # event in the past (one started an hour back once ran past the API's 5 minutes of clock skew).
    first, last = datetime.fromtimestamp(now - 23 * 3600, UTC), datetime.fromtimestamp(now - 6 * 3600, UTC)
    piece = Piece(spec, 0, count, first, last, seed, session_prefix=f"sess-{seed}-")
    events: list[dict[str, Any]] = []
    for talk in conversations(piece):
        for seq, (micros, lk_type, provider, model, usage) in enumerate(talk.events):
            stamp = datetime.fromtimestamp(micros // 1000 / 1000, UTC).isoformat(timespec="milliseconds")
            events.append(
                {
                    "id": f"{prefix}-{len(events):07d}",
                    "timestamp": stamp.replace("+00:00", "Z"),
                    "session_id": talk.session_id,
                    "provider": provider,
                    "model": model,
                    "usage": {
                        code: int(q) if q.isdigit() else float(q) for code, q in json.loads(usage).items()
                    },
                    "metadata": {"livekit_type": lk_type, "seq": seq},
                }
            )
    return events


def batches_for(phase: dict[str, Any], client: int, now: float) -> list[list[dict[str, Any]]]:
    """The batches one client sends in a phase. With ``dup_fraction``, that share of every batch repeats
    events the same client stored in the fresh phase (identical payloads: duplicates, not conflicts)."""
    size, count = phase["batch_size"], phase["batches"]
    dups = round(size * phase.get("dup_fraction", 0.0))
    fresh = make_events(phase["seed"] + client, f"{phase['prefix']}-{client}", (size - dups) * count, now)
    if not dups:
        return [fresh[i * size : (i + 1) * size] for i in range(count)]
    earlier = make_events(phase["dup_seed"] + client, f"{phase['dup_prefix']}-{client}", size * count, now)
    new = size - dups
    return [fresh[i * new : (i + 1) * new] + earlier[i * size : i * size + dups] for i in range(count)]


class Poster:
    """One keep-alive connection (reopened when the server closes it, as gunicorn's sync workers do)."""

    def __init__(self, port: int, key: str):
        self.port = port
        # TLS ends at the load balancer in production (config/settings.py), which says so in this header.
        self.headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "X-Forwarded-Proto": "https",
        }
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request("POST", EVENTS_PATH, body, self.headers)
                response = self.conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if reused and attempt == 0:
                    continue  # the server dropped an idle keep-alive connection: resend once on a new one
                raise
            if response.will_close:
                self.close()
            return response.status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def client_result(**kwargs: Any) -> dict[str, Any]:
    base = {
        "start": 0.0,
        "end": 0.0,
        "latencies": [],
        "events": 0,
        "accepted": 0,
        "duplicates": 0,
        "conflicts": 0,
        "errors": 0,
        "first_error": "",
    }
    base.update(kwargs)
    return base


def api_client(
    client: int, phase: dict[str, Any], port: int, key: str, now: float, barrier, release, results
) -> None:
    """Post this client's requests, back to back or (with ``interval``) on a fixed schedule; report latencies
    and the response counts. On a schedule, latency runs from the time a request was due, so a server that
    falls behind is charged for the wait (no coordinated omission)."""
    try:
        bodies = [(len(b), json.dumps({"events": b}).encode()) for b in batches_for(phase, client, now)]
        poster = Poster(port, key)
        barrier.wait(timeout=300)
        result = client_result(start=time.monotonic())
        deadline = result["start"] + phase["timeout"]
        interval = phase.get("interval", 0.0)
        first_due = result["start"] + random.Random(client).uniform(0, interval)
        for n, (count, body) in enumerate(bodies):
            started = time.monotonic()
            if started > deadline:
                break
            if interval:
                due = first_due + n * interval
                if due > started:
                    time.sleep(due - started)
                started = due
            try:
                status, data = poster.post(body)
            except OSError as exc:
                status, data = 0, repr(exc).encode()
            result["latencies"].append(time.monotonic() - started)
            result["events"] += count
            if status == 200:
                answer = json.loads(data)
                result["accepted"] += answer["accepted"]
                result["duplicates"] += answer["duplicates"]
                result["conflicts"] += answer["conflicts"]
            else:
                result["errors"] += 1
                result["first_error"] = result["first_error"] or f"HTTP {status}: {data[:300]!r}"
        result["end"] = time.monotonic()
        results.put((client, result))
        release.wait(timeout=120)
        poster.close()
    except BaseException as exc:
        results.put((client, client_result(errors=1, first_error=f"client crashed: {exc!r}")))
        raise


# The COPY baseline: each batch COPYed into a temp table, then moved by this INSERT, deduped as ingest dedupes
# (ids claimed in usage_eventid, only the claimed rows stored: decision 023).
COPY_COLUMNS = "event_id, ts, session_id, provider, model, usage, metadata"
COPY_INSERT = store_claimed("bench_incoming")


def copy_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def stored_quantity(value: int | float) -> str:
    return format(Decimal(repr(value)).normalize(), "f")


def copy_rows(events: list[dict[str, Any]]) -> bytes:
    """COPY text for events as the API stores them (canonical decimal strings), rendered before the clock
    starts: the baseline is the database's work alone."""
    lines = []
    for event in events:
        usage = {code: stored_quantity(q) for code, q in event["usage"].items()}
        usage_json = json.dumps(usage, separators=(",", ":"))
        metadata_json = json.dumps(event["metadata"], separators=(",", ":"), ensure_ascii=False)
        fields = [
            event["id"],
            event["timestamp"],
            event["session_id"],
            event["provider"],
            event["model"],
            usage_json,
            metadata_json,
        ]
        lines.append("\t".join(copy_field(f) for f in fields))
    return ("\n".join(lines) + "\n").encode()


def copy_client(
    client: int,
    phase: dict[str, Any],
    url: str,
    owner: tuple[int, int],
    now: float,
    barrier,
    release,
    results,
) -> None:
    """COPY each batch into a temp table, then INSERT … SELECT … ON CONFLICT DO NOTHING: one transaction
    per batch, like one API request."""
    import psycopg

    try:
        payloads = [(len(b), copy_rows(b)) for b in batches_for(phase, client, now)]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TEMP TABLE bench_incoming (event_id text, ts timestamptz, session_id text, provider text,"
                " model text, usage jsonb, metadata jsonb) ON COMMIT DELETE ROWS"
            )
            barrier.wait(timeout=300)
            result = client_result(start=time.monotonic())
            deadline = result["start"] + phase["timeout"]
            with conn.cursor() as cursor:
                for count, data in payloads:
                    if time.monotonic() > deadline:
                        break
                    started = time.monotonic()
                    with conn.transaction():
                        with cursor.copy(f"COPY bench_incoming ({COPY_COLUMNS}) FROM STDIN") as copy:
                            copy.write(data)
                        cursor.execute(COPY_INSERT, {"tenant": owner[0], "agent": owner[1]})
                        inserted = cursor.rowcount
                    result["latencies"].append(time.monotonic() - started)
                    result["events"] += count
                    result["accepted"] += inserted
                    result["duplicates"] += count - inserted
            result["end"] = time.monotonic()
            results.put((client, result))
            release.wait(timeout=120)  # keep the backend alive until its CPU time has been read
    except BaseException as exc:
        results.put((client, client_result(errors=1, first_error=f"client crashed: {exc!r}")))
        raise


class CpuMeter:
    """CPU seconds of the server side, read from /proc: gunicorn's workers and the PostgreSQL backends serving
    the scratch database (found by their process title). Wall-clock rates on a shared machine move with
    whatever else runs; CPU per event does much less. PostgreSQL is only seen when it runs on this host."""

    def __init__(self, gunicorn_pid: int, db_name: str):
        import psutil

        self.psutil = psutil
        self.gunicorn = psutil.Process(gunicorn_pid)
        self.marker = f" {db_name} "

    def _times(self, procs) -> dict[int, float]:
        times = {}
        for proc in procs:
            try:
                cpu = proc.cpu_times()
                times[proc.pid] = cpu.user + cpu.system
            except self.psutil.Error:
                pass
        return times

    def sample(self) -> dict[str, dict[int, float]]:
        backends = []
        for proc in self.psutil.process_iter(["cmdline"]):
            title = " ".join(proc.info["cmdline"] or ()) + " "
            # Backends only: autovacuum starts when it likes, so charging it to the phase at hand is noise
            # (settle() below vacuums between phases instead).
            if title.startswith("postgres:") and self.marker in title and "autovacuum" not in title:
                backends.append(proc)
        return {"app": self._times(self.gunicorn.children()), "db": self._times(backends)}

    def used_since(self, before: dict[str, dict[int, float]]) -> dict[str, float]:
        after = self.sample()
        used = {
            part: sum(t - before[part].get(pid, 0.0) for pid, t in after[part].items())
            for part in ("app", "db")
        }
        if not after["db"]:
            used["db"] = float("nan")  # no backend on this host: PostgreSQL runs elsewhere
        return used


def run_clients(
    target, argsets: list[tuple], timeout: float, cpu: CpuMeter | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run one process per client, released together by a barrier; return their results and the CPU seconds
    the server side (gunicorn workers, PostgreSQL backends of the scratch database) used meanwhile."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(argsets) + 1)
    release = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args, barrier, release, results), daemon=True) for args in argsets
    ]
    for proc in procs:
        proc.start()
    collected: dict[int, dict[str, Any]] = {}
    used: dict[str, float] = {}
    try:
        barrier.wait(timeout=300)  # every client has built its requests and connected
        before = cpu.sample() if cpu else {}
        give_up = time.monotonic() + timeout + 300  # generous: generation before the barrier, then the phase
        while len(collected) < len(procs):
            try:
                client, result = results.get(timeout=1.0)
                collected[client] = result
            except queue.Empty:
                if time.monotonic() > give_up:
                    raise RuntimeError("benchmark clients did not finish in time") from None
                if any(p.exitcode not in (None, 0) for p in procs) and results.empty():
                    time.sleep(1.0)
                    if results.empty():
                        raise RuntimeError("a benchmark client died; see its traceback above") from None
        if cpu:
            used = cpu.used_since(before)
        release.set()
        for proc in procs:
            proc.join(timeout=30)
    finally:
        release.set()
        barrier.abort()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
    return [collected[i] for i in sorted(collected)], used


def settle(url: str) -> None:
    """Between phases: vacuum and analyze the tables written to, and checkpoint when allowed, so that every
    phase starts from the same state rather than meeting the previous phase's autovacuum or checkpoint."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) usage_usageevent, usage_eventid, usage_usagerollup, usage_session")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


def summarize(name: str, outcome: tuple[list[dict[str, Any]], dict[str, float]]) -> dict[str, Any]:
    results, cpu = outcome
    latencies = [x for r in results for x in r["latencies"]]
    started = [r["start"] for r in results if r["start"]]
    ended = [r["end"] for r in results if r["end"]]
    wall = (max(ended) - min(started)) if started and ended else float("nan")
    events = sum(r["events"] for r in results)
    return {
        "name": name,
        "cpu_app": cpu.get("app", float("nan")),
        "cpu_db": cpu.get("db", float("nan")),
        "clients": len(results),
        "requests": len(latencies),
        "events": events,
        "accepted": sum(r["accepted"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "conflicts": sum(r["conflicts"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
        "wall": wall,
        "rate": events / wall if wall and wall == wall else float("nan"),
        "req_rate": len(latencies) / wall if wall and wall == wall else float("nan"),
        "p50": percentile(latencies, 0.50) * 1000,
        "p95": percentile(latencies, 0.95) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "max": (max(latencies) * 1000) if latencies else float("nan"),
    }


def check_counts(summary: dict[str, Any], resent_per_request: int) -> list[str]:
    """Responses must add up: every event accepted or (the resent ones) a duplicate; no conflict, no error."""
    problems = []
    if summary["errors"]:
        problems.append(
            f"{summary['name']}: {summary['errors']} failed requests (first: {summary['first_error']})"
        )
    if summary["conflicts"]:
        problems.append(f"{summary['name']}: {summary['conflicts']} conflicts")
    expected_dups = summary["requests"] * resent_per_request
    if (
        summary["duplicates"] != expected_dups
        or summary["accepted"] + summary["duplicates"] != summary["events"]
    ):
        problems.append(
            f"{summary['name']}: accepted {summary['accepted']} + duplicates {summary['duplicates']}, "
            f"expected {summary['events'] - expected_dups} + {expected_dups}"
        )
    return problems


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer batches and requests)")
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent batch clients (and COPY connections)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="events per batch request / COPY transaction"
    )
    parser.add_argument("--batches", type=int, default=None, help="batches per client (default 25; quick 5)")
    parser.add_argument(
        "--dup-fraction",
        type=float,
        default=0.1,
        help="share of resent events in the duplicate phases (0: skip)",
    )
    parser.add_argument("--single-clients", type=int, default=20, help="concurrent single-event clients")
    parser.add_argument(
        "--single-rates",
        default="2,5,7.5,10,15",
        help="paced single-event phases: requests per second per client, comma-separated",
    )
    parser.add_argument(
        "--single-seconds",
        type=float,
        default=None,
        help="length of each single-event phase (default 10; quick 4)",
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=120.0, help="seconds after which a phase stops early"
    )
    cores = os.cpu_count() or 1
    parser.add_argument("--workers", type=int, default=2 * cores + 1, help="gunicorn workers (2 × cores + 1)")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (> 1: gthread)")
    parser.add_argument(
        "--db-name", default="meterline_bench", help="scratch database (dropped and recreated)"
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="leave the scratch database in place afterwards"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a DESIGN §9 target is missed")
    args = parser.parse_args()
    args.batches = args.batches or (5 if args.quick else 25)
    args.single_seconds = args.single_seconds or (4.0 if args.quick else 10.0)
    try:
        args.single_rates = [float(r) for r in args.single_rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--single-rates must be numbers separated by commas")
    scratch.scratch_name(parser, args.db_name)
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be 1–1000 (the API's limit)")
    if not 0 <= args.dup_fraction < 1 or any(r <= 0 for r in args.single_rates):
        parser.error("--dup-fraction must be in [0, 1) and --single-rates positive")
    return args


def phases_for(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    run = secrets.token_hex(3)
    size, batches, dup = args.batch_size, args.batches, args.dup_fraction
    phases: dict[str, dict[str, Any]] = {
        "warm": {"prefix": f"{run}-warm", "seed": 9000, "batch_size": 20, "batches": 10, "timeout": 60},
        "api": {"prefix": f"{run}-api", "seed": 1000, "batch_size": size, "batches": batches},
        "copy": {"prefix": f"{run}-copy", "seed": 1000, "batch_size": size, "batches": batches},
        "minimal": {"prefix": f"{run}-min", "seed": 1000, "batch_size": size, "batches": batches},
        "api_dup": {
            "prefix": f"{run}-apid",
            "seed": 2000,
            "batch_size": size,
            "batches": batches,
            "dup_fraction": dup,
            "dup_prefix": f"{run}-api",
            "dup_seed": 1000,
        },
        "copy_dup": {
            "prefix": f"{run}-copyd",
            "seed": 2000,
            "batch_size": size,
            "batches": batches,
            "dup_fraction": dup,
            "dup_prefix": f"{run}-copy",
            "dup_seed": 1000,
        },
        # Back to back: as many requests as fit in the time (each client stops at the deadline).
        "single_max": {
            "prefix": f"{run}-onemax",
            "seed": 4000,
            "batch_size": 1,
            "batches": int(args.single_seconds * 200),
            "timeout": args.single_seconds,
        },
    }
    for i, rate in enumerate(args.single_rates):
        # Paced: a fixed schedule of rate × seconds requests; a server that falls behind gets up to
        # three times the phase length to catch up (and is charged the wait in the latencies).
        phases[f"single_{i}"] = {
            "prefix": f"{run}-one{i}",
            "seed": 3000 + 100 * i,
            "batch_size": 1,
            "batches": max(1, round(rate * args.single_seconds)),
            "interval": 1 / rate,
            "timeout": 3 * args.single_seconds,
        }
    for phase in phases.values():
        phase.setdefault("timeout", args.phase_timeout)
    return phases


def main() -> int:
    args = parse_args()
    scratch.exit_on_sigterm()
    report = Report("Ingestion benchmark")
    now = time.time()
    phases = phases_for(args)
    gunicorn = None
    with (
        scratch.database_server() as (admin_url, server),
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as workdir,
    ):
        bench_url = scratch.with_database(admin_url, args.db_name)
        pg_version = scratch.server_version(admin_url)
        try:
            scratch.recreate_database(admin_url, args.db_name)
            env = scratch.app_env(
                bench_url,
                ALLOWED_HOSTS="127.0.0.1,localhost",
                API_THROTTLE_RATE="100000000/s",
                PYTHONUNBUFFERED="1",
            )
            print(f"scratch database {args.db_name}: migrating, issuing keys …", flush=True)
            scratch.migrate(env)
            keys = [
                scratch.manage(
                    env, "issue_api_key", "--tenant", "bench", "--agent", f"bench-{i}", "--create"
                ).strip()
                for i in range(1, max(args.clients, 1) + 1)
            ]
            # The bench tenant is on the demo plan, as a real tenant is on a plan: ingest then does the work it
            # does in production (the unpriced report looks the plan's prices up for every batch).
            scratch.manage(env, "shell", "-c", SUBSCRIBE_TO_DEMO_PLAN)
            import psycopg

            with psycopg.connect(bench_url) as conn:
                owners = conn.execute(
                    "SELECT t.id, a.id FROM tenants_tenant t JOIN tenants_agent a ON a.tenant_id = t.id "
                    "WHERE t.slug = 'bench' ORDER BY a.id"
                ).fetchall()

            port, minimal_port = free_port(), free_port()
            options = ["--workers", str(args.workers), "--backlog", "2048", "--timeout", "120"]
            server_desc = f"gunicorn, {args.workers} sync workers"
            if args.threads > 1:
                options += ["--worker-class", "gthread", "--threads", str(args.threads)]
                server_desc = f"gunicorn, {args.workers} gthread workers × {args.threads} threads"
            gunicorn = start_gunicorn(env, port, options, Path(workdir) / "gunicorn.log")
            cpu = CpuMeter(gunicorn.pid, args.db_name)
            print(f"{server_desc} on 127.0.0.1:{port}; PostgreSQL {pg_version}", flush=True)

            def api_phase(name: str, clients: int):
                settle(bench_url)
                argsets = [(c, phases[name], port, keys[c % len(keys)], now) for c in range(clients)]
                return run_clients(api_client, argsets, phases[name]["timeout"], cpu)

            def copy_phase(name: str):
                settle(bench_url)
                argsets = [
                    (c, phases[name], bench_url, owners[c % len(owners)], now) for c in range(args.clients)
                ]
                return run_clients(copy_client, argsets, phases[name]["timeout"], cpu)

            print("warming up …", flush=True)
            problems = check_counts(
                summarize("warm-up", api_phase("warm", max(args.clients, args.workers * 2))), 0
            )
            if problems:
                raise RuntimeError("warm-up failed: " + "; ".join(problems))

            size, batches, dup = args.batch_size, args.batches, args.dup_fraction
            rows, expected = [], []
            print(f"batches: {args.clients} clients × {batches} × {size} events, API then COPY …", flush=True)
            rows.append(summarize(f"API, batches of {size}", api_phase("api", args.clients)))
            rows.append(summarize(f"COPY + dedupe, {size}/txn", copy_phase("copy")))
            expected += [0, 0]
            print("the same through the minimal endpoint (bench.minimal) …", flush=True)
            minimal = start_server(
                [
                    PYTHON,
                    "-m",
                    "gunicorn",
                    "bench.minimal:app",
                    "--bind",
                    f"127.0.0.1:{minimal_port}",
                    *options,
                ],
                BASE,
                {
                    **os.environ,
                    "MINIMAL_DATABASE_URL": bench_url,
                    "MINIMAL_TENANT": str(owners[0][0]),
                    "MINIMAL_AGENT": str(owners[0][1]),
                },
                minimal_port,
                Path(workdir) / "minimal.log",
            )
            try:
                settle(bench_url)
                argsets = [(c, phases["minimal"], minimal_port, "", now) for c in range(args.clients)]
                minimal_row = summarize(
                    f"minimal endpoint, {size}/req",
                    run_clients(
                        api_client, argsets, phases["minimal"]["timeout"], CpuMeter(minimal.pid, args.db_name)
                    ),
                )
            finally:
                stop_gunicorn(minimal)
            if dup > 0:
                print(f"the same with {dup:.0%} resent events …", flush=True)
                rows.append(summarize(f"API, batches, {dup:.0%} dup", api_phase("api_dup", args.clients)))
                rows.append(summarize(f"COPY + dedupe, {dup:.0%} dup", copy_phase("copy_dup")))
                expected += [round(size * dup)] * 2  # as batches_for() builds them
            n = args.single_clients
            print(
                f"single events: {n} clients, {args.single_seconds:g} s per phase, paced then back to back …"
            )
            for i, rate in enumerate(args.single_rates):
                rows.append(summarize(f"API, 1 event, {rate:g}/s × {n}", api_phase(f"single_{i}", n)))
                expected.append(0)
            rows.append(summarize(f"API, 1 event, back to back × {n}", api_phase("single_max", n)))
            expected.append(0)
        finally:
            stop_gunicorn(gunicorn)
            if not args.keep_db:
                scratch.drop_database(admin_url, args.db_name)

    problems = [p for row, share in zip(rows, expected, strict=True) for p in check_counts(row, share)]
    problems += check_counts(minimal_row, 0)
    report.header(f"{server_desc}; PostgreSQL {pg_version} ({server})")
    print_report(report, args, rows, minimal_row)
    for problem in problems:
        print(f"ERROR: {problem}")
    ratio = rows[0]["rate"] / rows[1]["rate"]
    paced = zip(args.single_rates, rows[len(rows) - len(args.single_rates) - 1 : -1], strict=True)
    paced_p99 = max(
        [row["p99"] for rate, row in paced if rate * args.single_clients == TARGET_SINGLE_RATE], default=0.0
    )
    if problems:
        return 2
    return 1 if args.strict and (ratio < TARGET_RATIO or paced_p99 > TARGET_SINGLE_P99_MS) else 0


PHASE_COLUMNS = [
    "phase",
    "clients",
    "requests",
    "events",
    "events/s",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "CPU ms app",
    "CPU ms db",
]


def cpu_per_unit(row: dict[str, Any]) -> tuple[str, str]:
    """Server CPU (gunicorn workers + PostgreSQL backends) per 1000 events, or per request for single events."""
    per = 1000 if row["events"] > row["requests"] else 1
    shown = []
    for seconds in (row["cpu_app"], row["cpu_db"]):
        known = row["events"] and seconds == seconds  # NaN: not measured
        shown.append(f"{seconds * 1000 * per / row['events']:.1f}" if known else "n/a")
    return shown[0], shown[1]


def saturation(points: list[tuple[float, float]]) -> str:
    """The offered rate (requests/s) at which the p99 first exceeds SATURATION_P99_MS, bracketed by the
    measured rates around it."""
    points = sorted(points)
    below = [rate for rate, p99 in points if p99 <= SATURATION_P99_MS]
    above = [rate for rate, p99 in points if p99 > SATURATION_P99_MS]
    if not above:
        return f"> {points[-1][0]:g} req/s (p99 ≤ {SATURATION_P99_MS:.0f} ms at every rate measured)"
    first_above = min(above)
    lower = [rate for rate in below if rate < first_above]
    if not lower:
        return f"< {first_above:g} req/s (p99 > {SATURATION_P99_MS:.0f} ms at the lowest rate measured)"
    return f"{max(lower):g}–{first_above:g} req/s"


def print_report(
    report: Report, args: argparse.Namespace, rows: list[dict[str, Any]], minimal: dict[str, Any]
) -> None:
    print_table(
        PHASE_COLUMNS,
        [
            [r["name"], r["clients"], r["requests"], r["events"], f"{r['rate']:.0f}", f"{r['req_rate']:.1f}"]
            + [f"{r[p]:.1f}" for p in ("p50", "p95", "p99", "max")]
            + list(cpu_per_unit(r))
            for r in [*rows[:2], minimal, *rows[2:]]
        ],
        notes=(
            "(CPU ms: server-side CPU per 1000 events for batches, per request for single events; app = gunicorn",
            " workers, db = PostgreSQL backends of the scratch database; n/a when PostgreSQL is on another host)",
        ),
    )
    api, copy = rows[0], rows[1]
    ratio = api["rate"] / copy["rate"]
    figures = [
        Figure(
            "ratio API / COPY, events/s (fresh ids)",
            f"{ratio:.2f}",
            target=f"≥ {TARGET_RATIO}",
            met=ratio >= TARGET_RATIO,
            note=f"{api['rate']:,.0f} / {copy['rate']:,.0f} events/s",
            peer=f"COPY-with-dedupe {copy['rate']:,.0f} events/s",
        )
    ]
    # The peer DESIGN §9 names: what a Python endpoint doing nothing but the store reaches in the same run.
    figures.append(
        Figure(
            "ratio minimal endpoint / COPY, events/s",
            f"{minimal['rate'] / copy['rate']:.2f}",
            note=f"{minimal['rate']:,.0f} events/s (bench.minimal: orjson, light checks, one statement)",
        )
    )
    figures.append(Figure("ratio API / minimal endpoint, events/s", f"{api['rate'] / minimal['rate']:.2f}"))
    if args.dup_fraction > 0:
        figures.append(
            Figure(
                f"ratio API / COPY, events/s ({args.dup_fraction:.0%} resent)",
                f"{rows[2]['rate'] / rows[3]['rate']:.2f}",
            )
        )
    cpu_api, cpu_copy = api["cpu_app"] + api["cpu_db"], copy["cpu_app"] + copy["cpu_db"]
    if cpu_api == cpu_api and cpu_api > 0 and copy["events"]:
        per_api, per_copy = cpu_api / api["events"], cpu_copy / copy["events"]
        figures.append(Figure("ratio COPY / API, server CPU per event", f"{per_copy / per_api:.2f}"))
    n = args.single_clients
    paced = list(zip(args.single_rates, rows[len(rows) - len(args.single_rates) - 1 : -1], strict=True))
    for rate, row in paced:
        at_target = rate * n == TARGET_SINGLE_RATE
        figures.append(
            Figure(
                f"single-event p99, {n} clients × {rate:g} req/s",
                f"{row['p99']:.1f}",
                "ms",
                f"≤ {TARGET_SINGLE_P99_MS:.0f} ms at {TARGET_SINGLE_RATE:g} req/s" if at_target else "",
                row["p99"] <= TARGET_SINGLE_P99_MS if at_target else None,
                f"{rate * n:g} req/s offered, {row['req_rate']:.0f} served",
            )
        )
    figures.append(
        Figure(
            f"single-event saturation, {n} clients",
            saturation([(rate * n, row["p99"]) for rate, row in paced]),
            note=f"where p99 crosses {SATURATION_P99_MS:.0f} ms, between the paced rates measured",
        )
    )
    flat_out = rows[-1]
    figures.append(
        Figure(
            f"single-event p99, {n} clients back to back",
            f"{flat_out['p99']:.1f}",
            "ms",
            note=f"at {flat_out['req_rate']:.0f} req/s (saturated: the latency there is queueing)",
        )
    )
    report.figures(figures)


if __name__ == "__main__":
    sys.exit(main())
