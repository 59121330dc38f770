"""``make bench-balance``: the real-time balance and pre-call authorizations at 10 M events (issue 15; a
script, not a test).

Target (issue 15): ``GET /api/v1/balance`` and ``POST /api/v1/authorizations`` p99 ≤ 50 ms at 20 concurrent
clients offering 100 requests/s, for a tenant with 10 M events in the period, on the 2-core machine.

Set-up: bench.portal's, imported (not copied), in a scratch database of its own (``meterline_bench_balance``):
the large tenant with 10 M events and two small ones, both rollups, billing.demo's plan with the previous month
invoiced and finalized and the current month's draft. Then the large tenant gets a ``prepaid-hard``
SpendPolicy and a purchased credit grant big enough for every hold the run asks for (topped up on ``--reuse``
when the balance has fallen short).

Measurement: gunicorn serves ``config.wsgi`` on loopback with the shipped configuration (config/gunicorn.py:
4 gthread workers × 16 threads; ``--sync N`` for N sync workers instead), production settings. 20 client
processes offer a constant request rate between them, open loop: each has a fixed schedule and its latency
runs from the time a request was due, not from when it was sent, so a server that falls behind is charged
for the wait (no coordinated omission). A new connection per request (the shipped server has keep-alive off).

* ``balance``: ``GET /api/v1/balance``.
* ``authorize``: ``POST /api/v1/authorizations`` with a new session id each and amount 0.50; the holds
  accumulate through the phase (default 15-min TTL) and are released in SQL after it (untimed).
* ``call``: the realistic cycle at the same total request rate: half the requests authorize a call as it
  starts, the other half release a call's hold ``--call-seconds`` later (``POST /authorizations/{id}/release``);
  only the requests due after the first ``--call-seconds`` are counted, once releases run at the same rate as
  authorizations.
* a sweep of ``balance`` and ``authorize`` at other rates (shorter phases), to find where p99 crosses 50 ms;
  a rate is skipped once a lower one saturated the server.

Then one more request of each kind in-process (Django's test client): its SQL statements with their times,
and for an authorization the time the tenant's policy row stays locked (authorizations of one tenant run one
at a time, so that time bounds their rate). ``--profile balance|authorize|release`` cProfiles that request.

    .venv/bin/python -m bench.balance                       # 10 M events (set-up 6–16 min on 2 cores)
    .venv/bin/python -m bench.balance --quick               # 500 k events, short phases: a smoke run
    .venv/bin/python -m bench.balance --keep                # keep the scratch database for --reuse
    .venv/bin/python -m bench.balance --reuse                # measure a kept database again (migrated first)
    .venv/bin/python -m bench.balance --reuse --in-process-only --profile authorize   # statements, cProfile
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import math
import multiprocessing as mp
import pstats
import queue
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import portal, scratch
from bench.ingest import CpuMeter
from bench.loader import load_usage
from bench.measure import SqlTimer, load_average, percentile
from bench.report import Figure, Report, print_table
from bench.server import free_port, start_gunicorn, stop_gunicorn

TARGET_P99_MS = 50.0
TARGET_RATE = 100.0
TARGET_CLIENTS = 20
AMOUNT = Decimal("0.50")
BALANCE_PATH = "/api/v1/balance"
AUTHORIZE_PATH = "/api/v1/authorizations"
SHIPPED = ["--config", "python:config.gunicorn"]


# --- set-up ---------------------------------------------------------------------------------------------


def planned_holds(args: argparse.Namespace) -> int:
    """An upper bound on the authorizations the run sends (each needs AMOUNT of available balance)."""
    total = args.rate * (args.seconds + args.call_seconds)
    total += sum(rate * args.sweep_seconds for rate in args.sweep)
    return int(total) + 1000


def ensure_prepaid(tenant_id: int, holds: int) -> dict[str, Any]:
    """The tenant on prepaid-hard, with available balance for ``holds`` holds of AMOUNT (twice over): a
    purchased grant of the difference when it has less. Active holds left by an interrupted run are released."""
    from django.utils import timezone

    from billing import credits
    from spend import control
    from spend.models import Hold, SpendPolicy
    from tenants.models import Tenant

    tenant = Tenant.objects.get(pk=tenant_id)
    policy, _ = SpendPolicy.objects.get_or_create(tenant=tenant)
    if policy.policy != SpendPolicy.Policy.PREPAID_HARD:
        policy.policy = SpendPolicy.Policy.PREPAID_HARD
        policy.save(update_fields=["policy"])
    Hold.objects.for_tenant(tenant).filter(released_at__isnull=True).update(
        released_at=timezone.now(), release_reason="bench"
    )
    before = control.balance(tenant)
    needed = AMOUNT * holds * 2
    granted = Decimal(0)
    if before.available < needed:
        granted = Decimal(math.ceil((needed - before.available) / 1000) * 1000)
        credits.grant(tenant, granted, source="purchased", reason="bench")
    after = control.balance(tenant)
    return {
        "policy": SpendPolicy.objects.get(tenant=tenant).policy,
        "ledger_balance": after.ledger_balance,
        "unbilled_usage": after.unbilled_usage,
        "available": after.available,
        "granted_now": granted,
        "needed": needed,
    }


def release_all(tenant_id: int) -> int:
    """After a phase (untimed): end the tenant's active holds, so every phase starts from none."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE spend_hold SET released_at = now(), release_reason = 'bench' "
            "WHERE tenant_id = %s AND released_at IS NULL",
            [tenant_id],
        )
        released = cursor.rowcount
        cursor.execute("VACUUM (ANALYZE) spend_hold")
    return released


def git(*args: str) -> str:
    command = ["git", *args]
    return subprocess.run(command, cwd=scratch.BASE, capture_output=True, text=True, check=True).stdout  # noqa: S603


def code_version() -> str:
    """The commit measured, and how many server files (not bench/, docs/, tests/) differ from it: the figures
    belong to the code gunicorn loaded."""
    try:
        head = git("log", "-1", "--format=%h %cI").strip()
        status = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    skip = ("bench/", "docs/", "tests/", "Makefile", "sdk/")
    changed = [line[3:] for line in status if not line[3:].startswith(skip)]
    return head + (f" + uncommitted changes in {len(changed)} server files" if changed else "")


# --- the clients ----------------------------------------------------------------------------------------


def schedule(index: int, plan: dict[str, Any]) -> list[tuple[float, str, int]]:
    """This client's requests of a phase: (due, seconds from the start; kind; call number), in due order.
    Clients share the rate evenly and start at a random offset within their interval."""
    clients, rate, seconds = plan["clients"], plan["rate"], plan["seconds"]
    jitter = random.Random(f"{plan['tag']}-{index}")
    if plan["kind"] in ("balance", "authorize"):
        interval = clients / rate
        first = jitter.uniform(0, interval)
        return [(first + n * interval, plan["kind"], n) for n in range(math.ceil(seconds / interval) + 1)
                if first + n * interval < seconds]  # fmt: skip
    # call: calls start at half the rate for warm + seconds; each call's release is due warm seconds later,
    # for calls that started before the last warm seconds (so both run at half the rate in the counted window)
    warm = plan["warm"]
    interval = 2 * clients / rate
    first = jitter.uniform(0, interval)
    out = []
    n = 0
    while (due := first + n * interval) < warm + seconds:
        out.append((due, "authorize", n))
        if due < seconds:
            out.append((due + warm, "release", n))
        n += 1
    return sorted(out)


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def run_plan(index: int, plan: dict[str, Any], port: int, key: str) -> dict[str, Any]:
    """One client's part of a phase, timed from each request's due time."""
    headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {key}"}
    post_headers = {**headers, "Content-Type": "application/json"}
    todo = schedule(index, plan)
    warm = plan.get("warm", 0.0)
    start = time.monotonic()
    give_up = start + warm + plan["seconds"] + plan["grace"]
    holds: dict[int, int] = {}
    samples: list[tuple[str, float, int]] = []  # (kind, seconds from due to the last byte, status)
    unsent = 0
    first_error = ""
    last_done = start
    for position, (due_offset, kind, call) in enumerate(todo):
        due = start + due_offset
        now = time.monotonic()
        if now > give_up:
            unsent = len(todo) - position
            break
        if due > now:
            time.sleep(due - now)
        if kind == "balance":
            method, path, body, hdrs = "GET", BALANCE_PATH, None, headers
        elif kind == "authorize":
            session = f"bench-{plan['tag']}-{index}-{call}"
            payload = {"session_id": session, "amount": str(plan["amount"])}
            method, path, body, hdrs = "POST", AUTHORIZE_PATH, json.dumps(payload).encode(), post_headers
        else:
            hold = holds.pop(call, None)
            if hold is None:
                continue  # its authorization failed: counted there
            method, path, body, hdrs = "POST", f"{AUTHORIZE_PATH}/{hold}/release", b"{}", post_headers
        try:
            status, data = send(port, method, path, hdrs, body)
        except OSError as exc:
            status, data = 0, repr(exc).encode()
        done = time.monotonic()
        if kind == "authorize" and status == 201:
            holds[call] = json.loads(data)["id"]
        if status not in (200, 201) and not first_error:
            first_error = f"{kind}: HTTP {status}: {data[:200]!r}"
        if due_offset >= warm:
            samples.append((kind, done - due, status))
            last_done = done
    return {
        "start": start,
        "last_done": last_done,
        "samples": samples,
        "unsent": unsent,
        "first_error": first_error,
    }


def client_loop(index: int, port: int, key: str, commands, results, barrier) -> None:
    """A client process: runs each phase it is given, released together with the others by the barrier."""
    while True:
        plan = commands.get()
        if plan is None:
            return
        try:
            barrier.wait(timeout=300)
            results.put((index, run_plan(index, plan, port, key)))
        except BaseException as exc:
            results.put((index, {"crash": repr(exc)}))
            raise


class Clients:
    """``count`` client processes kept for the whole run (spawned once, not per phase)."""

    def __init__(self, count: int, port: int, key: str) -> None:
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(count + 1)
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(
                target=client_loop,
                args=(i, port, key, self.commands[i], self.results, self.barrier),
                daemon=True,
            )
            for i in range(count)
        ]
        for proc in self.procs:
            proc.start()

    def cpu_seconds(self) -> tuple[float, float]:
        """(busy CPU seconds of the whole machine, CPU seconds of the client processes) so far."""
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        mine = 0.0
        for proc in self.procs:
            try:
                c = psutil.Process(proc.pid).cpu_times()
                mine += c.user + c.system
            except psutil.Error:
                pass
        return busy, mine

    def run(self, plan: dict[str, Any], cpu: CpuMeter | None) -> tuple[list[dict[str, Any]], dict]:
        for commands in self.commands:
            commands.put(plan)
        load_before = load_average()
        self.barrier.wait(timeout=300)
        before = cpu.sample() if cpu else {}
        machine_before, clients_before = self.cpu_seconds()
        began = time.monotonic()
        load = load_average()
        collected: dict[int, dict[str, Any]] = {}
        give_up = time.monotonic() + plan.get("warm", 0) + plan["seconds"] + plan["grace"] + 120
        while len(collected) < len(self.procs):
            try:
                index, result = self.results.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > give_up or any(p.exitcode not in (None, 0) for p in self.procs):
                    raise RuntimeError("benchmark clients died or did not finish") from None
                load = max(load, load_average())
                continue
            if "crash" in result:
                raise RuntimeError(f"client {index} crashed: {result['crash']}")
            collected[index] = result
        used = cpu.used_since(before) if cpu else {}
        machine, clients = self.cpu_seconds()
        wall = time.monotonic() - began
        busy, clients = machine - machine_before, clients - clients_before
        server = used.get("app", 0.0) + (used.get("db", 0.0) if used.get("db") == used.get("db") else 0.0)
        return [collected[i] for i in sorted(collected)], {
            **used,
            "load_before": load_before,
            "load": max(load, load_average()),
            # cores in use on average: the whole machine, the load generator, and everything that is neither
            # it nor the server (PostgreSQL's own background processes, and whatever else runs here)
            "busy_cores": busy / wall,
            "client_cores": clients / wall,
            "other_cores": max(busy - server - clients, 0.0) / wall,
        }

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


def summarize(phase: str, plan: dict[str, Any], results: list[dict], used: dict) -> list[dict[str, Any]]:
    """One row per request kind of the phase: latency percentiles over every counted request (failures too,
    with the time they took), errors, and the rate served (2xx per second of the counted window)."""
    start = min(r["start"] for r in results) + plan.get("warm", 0.0)
    window = max(plan["seconds"], max(r["last_done"] for r in results) - start)
    kinds = sorted(
        {s[0] for r in results for s in r["samples"]}, key=["balance", "authorize", "release"].index
    )
    total = sum(len(r["samples"]) for r in results)
    rows = []
    for kind in kinds:
        samples = [s for r in results for s in r["samples"] if s[0] == kind]
        latencies = [s[1] * 1000 for s in samples]
        ok = sum(1 for s in samples if s[2] in (200, 201))
        rows.append(
            {
                "phase": phase,
                "kind": kind,
                "offered": plan["rate"],
                "clients": plan["clients"],
                "seconds": plan["seconds"],
                "requests": len(samples),
                "errors": len(samples) - ok,
                "unsent": sum(r["unsent"] for r in results) if kind == kinds[0] else 0,
                "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
                "served": ok / window,
                "p50": percentile(latencies, 0.50),
                "p95": percentile(latencies, 0.95),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies, default=float("nan")),
                # the phase's server CPU per request (every request of the phase alike)
                "cpu_app": used.get("app", float("nan")) * 1000 / max(total, 1),
                "cpu_db": used.get("db", float("nan")) * 1000 / max(total, 1),
                "load": used.get("load", float("nan")),
                "load_before": used.get("load_before", float("nan")),
                "busy_cores": used.get("busy_cores", float("nan")),
                "client_cores": used.get("client_cores", float("nan")),
                "other_cores": used.get("other_cores", float("nan")),
            }
        )
    return rows


def saturated(row: dict[str, Any]) -> bool:
    """The server could not keep up: served well below offered, or latency far past the target."""
    return row["served"] < 0.8 * row["offered"] or row["p99"] > 20 * TARGET_P99_MS or row["unsent"] > 0


# --- in-process: where the time goes --------------------------------------------------------------------


class StatementTimer(SqlTimer):
    """SqlTimer that also keeps each statement: (start, seconds, SQL)."""

    def __init__(self) -> None:
        super().__init__()
        self.statements: list[tuple[float, float, str]] = []

    def __call__(self, execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - began
            self.seconds += took
            self.queries += 1
            self.statements.append((began, took, sql))


def short_sql(sql: str, width: int = 118) -> str:
    text = re.sub(r"\s+", " ", sql).strip()
    text = re.sub(r'"[a-z_]+"\."([a-z_]+)"', r"\1", text)  # "table"."column" → column
    return text if len(text) <= width else text[: width - 1] + "…"


def in_process(key: str, profile: str | None, repeat: int = 5) -> dict[str, dict[str, Any]]:
    """Each request kind in this process (Django's test client, the same settings): the median of ``repeat``
    runs (after one warm-up) of statements, SQL time and total time, the statements of the median run, and for
    an authorization the time from taking the policy row's lock to the end of the transaction's last
    statement. With ``profile``, one more request of that kind under cProfile."""
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {key}")
    tag = secrets.token_hex(3)
    counter = iter(range(10**6))

    def authorize():
        body = {"session_id": f"bench-inproc-{tag}-{next(counter)}", "amount": str(AMOUNT)}
        return client.post(AUTHORIZE_PATH, body, content_type="application/json")

    def prepare(kind: str):
        """The request to time, as a callable (a release gets its hold first, untimed)."""
        if kind == "balance":
            return lambda: client.get(BALANCE_PATH)
        if kind == "authorize":
            return authorize
        path = f"{AUTHORIZE_PATH}/{authorize().json()['id']}/release"
        return lambda: client.post(path, {}, content_type="application/json")

    found: dict[str, dict[str, Any]] = {}
    for kind in ("balance", "authorize", "release"):
        prepare(kind)()  # warm
        runs = []
        for _ in range(repeat):
            request = prepare(kind)
            timer = StatementTimer()
            with connection.execute_wrapper(timer):
                began = time.perf_counter()
                response = request()
                total = time.perf_counter() - began
            if response.status_code not in (200, 201):
                raise RuntimeError(f"{kind} in-process: {response.status_code} {response.content[:300]!r}")
            lock = None
            locks = [s for s in timer.statements if "FOR UPDATE" in s[2] and "spend_spendpolicy" in s[2]]
            if locks:
                last = timer.statements[-1]
                lock = (last[0] + last[1] - locks[0][0]) * 1000
            runs.append((total * 1000, timer, lock))
        runs.sort(key=lambda r: r[0])
        total_ms, timer, lock = runs[len(runs) // 2]
        found[kind] = {
            "statements": timer.queries,
            "sql_ms": timer.seconds * 1000,
            "total_ms": total_ms,
            "lock_ms": lock,
            "sql": [(took * 1000, short_sql(sql)) for _, took, sql in timer.statements],
        }
        if profile == kind:
            request = prepare(kind)
            profiler = cProfile.Profile()
            profiler.enable()
            request()
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).strip_dirs()
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(25)
            print(f"\n  cProfile of one {kind} request, in-process:\n{out.getvalue()}")
    return found


# --- the run --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=scratch.parse_count, default=portal.TARGET_EVENTS, help="events of the large tenant"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500k events, short phases")
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS, help="client processes (default 20)")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="requests/s offered (default 100)")
    parser.add_argument("--seconds", type=float, default=45.0, help="counted seconds per main phase (45)")
    parser.add_argument(
        "--call-seconds", type=float, default=10.0, help="call phase: seconds from authorize to release (10)"
    )
    parser.add_argument(
        "--sweep", default="10,25,50,200,400", help="other rates for balance and authorize, comma-separated"
    )
    parser.add_argument("--sweep-seconds", type=float, default=20.0, help="seconds per sweep phase (20)")
    parser.add_argument(
        "--sync", type=int, metavar="N", help="N sync gunicorn workers, not the shipped config"
    )
    parser.add_argument("--seed", type=int, default=20261)
    parser.add_argument("--db-name", default="meterline_bench_balance")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--reuse", action="store_true", help="measure a kept scratch database (migrated first)"
    )
    parser.add_argument(
        "--profile", choices=["balance", "authorize", "release"], help="cProfile one such request, in-process"
    )
    parser.add_argument(
        "--in-process-only",
        action="store_true",
        help="no HTTP phases: the in-process figures (and --profile)",
    )
    args = parser.parse_args()
    try:
        args.sweep = sorted({float(r) for r in args.sweep.split(",") if r.strip()} - {args.rate})
    except ValueError:
        parser.error("--sweep must be numbers separated by commas")
    if args.quick:
        args.events = 500_000
        args.seconds = min(args.seconds, 10.0)
        args.call_seconds = min(args.call_seconds, 5.0)
        args.sweep_seconds = min(args.sweep_seconds, 5.0)
    if args.rate <= 0 or any(r <= 0 for r in args.sweep) or args.clients < 1:
        parser.error("rates and --clients must be positive")
    scratch.scratch_name(parser, args.db_name)
    if args.reuse:
        args.keep = True
    return args


def main() -> int:
    args = parse_args()
    scratch.exit_on_sigterm()
    report = Report("Balance and authorizations", targets="issue 15")
    gunicorn = None
    clients = None
    setup: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    with (
        scratch.database_server() as (admin_url, server),
        tempfile.TemporaryDirectory(prefix="bench-balance-") as workdir,
    ):
        bench_url = scratch.with_database(admin_url, args.db_name)
        pg_version = scratch.server_version(admin_url)
        print(f"PostgreSQL {pg_version} via {server}; scratch database {args.db_name}", flush=True)
        env = portal.server_env(bench_url)
        log = Path(workdir) / "gunicorn.log"
        try:
            if not args.reuse:
                began = time.perf_counter()
                scratch.recreate_database(admin_url, args.db_name)
                migrated = scratch.migrate(env)
                print(f"  migrated in {migrated:.1f} s", flush=True)
                scratch.setup_django(env)
                from django.utils import timezone

                now = timezone.now()
                specs = portal.tenant_specs(args.events)
                portal.create_tenants(specs)
                loaded = load_usage(bench_url, portal.recent_traffic(specs, now, args.seed))
                billing = portal.set_up_billing(specs, now)
                print(f"  plan, per-call costs, invoices and budgets in {billing:.1f} s", flush=True)
                setup = {
                    **loaded,
                    "migrate": migrated,
                    "billing": billing,
                    "total": time.perf_counter() - began,
                }
                print(f"  set-up: {setup['total']:.1f} s", flush=True)
            else:
                migrated = scratch.migrate(env)  # the schema may have gained migrations since it was kept
                print(f"  reusing {args.db_name}; migrate: {migrated:.1f} s", flush=True)
                scratch.setup_django(env)
            fx = portal.fixture()
            prepaid = ensure_prepaid(fx.tenant_id, planned_holds(args))
            print(
                f"  {prepaid['policy']}: ledger {prepaid['ledger_balance']:,.2f}, unbilled usage "
                f"{prepaid['unbilled_usage']:,.2f}, available {prepaid['available']:,.2f} USD "
                f"(granted now: {prepaid['granted_now']:,.0f})",
                flush=True,
            )
            scratch.close_django()
            if args.in_process_only:
                sql = in_process(fx.api_key, args.profile)
                release_all(fx.tenant_id)
                print_in_process(sql)
                return 0

            scratch.manage(env, "collectstatic", "--no-input", "-v", "0")
            port = free_port()
            options = (
                ["--worker-class", "sync", "--workers", str(args.sync), "--threads", "1", "--timeout", "120"]
                if args.sync
                else SHIPPED
            )
            server_desc = (
                f"gunicorn {args.sync} sync workers" if args.sync else "gunicorn shipped (4 × 16 gthread)"
            )
            args.code = code_version()
            gunicorn = start_gunicorn(env, port, options, log)
            print(f"  code: {args.code}", flush=True)
            cpu = CpuMeter(gunicorn.pid, args.db_name)
            for kind in ("balance", "authorize"):  # both answer before anything is timed
                body = json.dumps({"session_id": f"bench-check-{secrets.token_hex(3)}", "amount": "0.50"})
                status, data = send(
                    port,
                    "GET" if kind == "balance" else "POST",
                    BALANCE_PATH if kind == "balance" else AUTHORIZE_PATH,
                    {
                        "Host": "127.0.0.1",
                        "Authorization": f"Bearer {fx.api_key}",
                        "Content-Type": "application/json",
                    },
                    None if kind == "balance" else body.encode(),
                )
                if status not in (200, 201):
                    raise RuntimeError(f"{kind}: HTTP {status}: {data[:300]!r}")
            print(f"  {server_desc} on 127.0.0.1:{port}; {args.clients} client processes …", flush=True)
            clients = Clients(args.clients, port, fx.api_key)
            tag = secrets.token_hex(3)

            def phase(kind: str, rate: float, seconds: float, **extra) -> list[dict[str, Any]]:
                plan = {
                    "kind": kind,
                    "rate": rate,
                    "seconds": seconds,
                    "clients": args.clients,
                    "tag": f"{tag}-{kind}-{rate:g}",
                    "amount": AMOUNT,
                    "grace": max(10.0, seconds),
                    **extra,
                }
                results, used = clients.run(plan, cpu)
                release_all(fx.tenant_id)
                scratch.close_django()  # no idle connection of this process during the next phase
                found = summarize(
                    kind if kind != "call" else "call (authorize → release)", plan, results, used
                )
                for row in found:
                    print(
                        f"  {row['phase']:<27} {row['kind']:<9} {rate:5g} req/s: p50 {row['p50']:7.1f}  p99 "
                        f"{row['p99']:7.1f}  max {row['max']:7.1f} ms, served {row['served']:5.1f}/s, "
                        f"errors {row['errors']}, unsent {row['unsent']}, cores {row['busy_cores']:.2f} "
                        f"(clients {row['client_cores']:.2f}, other {row['other_cores']:.2f}), load "
                        f"{row['load_before']:.1f}→{row['load']:.1f}",
                        flush=True,
                    )
                    if row["first_error"] and row["errors"]:
                        print(f"    first error: {row['first_error']}", flush=True)
                time.sleep(2)
                return found

            # warm-up: every worker process imports and connects before anything is counted
            phase("balance", 50, 3)
            phase("authorize", 50, 3)
            for kind in ("balance", "authorize"):
                rows += phase(kind, args.rate, args.seconds)
            rows += phase("call", args.rate, args.seconds, warm=args.call_seconds)
            for kind in ("balance", "authorize"):
                for rate in args.sweep:
                    lower = [r for r in rows if r["phase"] == kind and r["offered"] < rate and saturated(r)]
                    if lower:
                        print(f"  {kind} {rate:g} req/s: skipped ({lower[0]['offered']:g} req/s saturated)")
                        continue
                    rows += phase(kind, rate, args.sweep_seconds)
            clients.close()
            clients = None
            stop_gunicorn(gunicorn)
            gunicorn = None
            sql = in_process(fx.api_key, args.profile)
            release_all(fx.tenant_id)
        except RuntimeError:
            if log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
                print(f"gunicorn's log, last 60 lines:\n{tail}", file=sys.stderr)
            raise
        finally:
            if clients:
                clients.close()
            stop_gunicorn(gunicorn)
            scratch.close_django()
            if not args.keep:
                scratch.drop_database(admin_url, args.db_name)
    print_report(report, args, fx, prepaid, rows, sql, setup, server, server_desc, pg_version)
    print(
        "\nJSON: "
        + json.dumps({"counts": fx.counts, "setup": setup, "phases": rows, "sql": sql}, default=str)
    )
    return 0


PHASE_COLUMNS = [
    "phase",
    "request",
    "offered/s",
    "served/s",
    "requests",
    "errors",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "CPU ms app+db",
    "cores busy (clients, other)",
    "load",
    f"p99 ≤ {TARGET_P99_MS:.0f} ms",
]


def crossing(rows: list[dict[str, Any]], kind: str) -> str:
    """Where the p99 of ``kind`` crosses the target over the measured rates."""
    points = sorted((r["offered"], r["p99"]) for r in rows if r["phase"] == kind)
    met = [rate for rate, p99 in points if p99 <= TARGET_P99_MS]
    missed = [rate for rate, p99 in points if p99 > TARGET_P99_MS]
    if not missed:
        return f"≤ {TARGET_P99_MS:.0f} ms up to {points[-1][0]:g} req/s (the highest measured)"
    if not met:
        return f"> {TARGET_P99_MS:.0f} ms already at {points[0][0]:g} req/s (the lowest measured)"
    below = max(r for r in met if r < min(missed)) if any(r < min(missed) for r in met) else None
    if below is None:
        return f"> {TARGET_P99_MS:.0f} ms at {min(missed):g} req/s"
    return f"crosses {TARGET_P99_MS:.0f} ms between {below:g} and {min(missed):g} req/s"


def print_in_process(sql: dict[str, dict[str, Any]]) -> None:
    print("\nin-process, one request each (median of 5): statements, SQL time, total")
    for kind, found in sql.items():
        lock = f"; policy row locked {found['lock_ms']:.1f} ms" if found["lock_ms"] is not None else ""
        print(
            f"  {kind:<9} {found['statements']:3d} statements, SQL {found['sql_ms']:6.1f} ms, total "
            f"{found['total_ms']:6.1f} ms{lock}"
        )
    for kind, found in sql.items():
        print(f"\n  {kind}: the statements")
        for took, text in found["sql"]:
            print(f"    {took:6.2f} ms  {text}")


def print_report(
    report: Report,
    args,
    fx: portal.Fixture,
    prepaid: dict,
    rows: list[dict],
    sql: dict,
    setup: dict | None,
    server: str,
    server_desc: str,
    pg_version: str,
) -> None:
    report.header(
        f"PostgreSQL {pg_version} ({server}); {server_desc}; {args.clients} open-loop client processes, latency "
        "from each request's due time, a new connection per request",
        f"code: {args.code}",
    )
    if setup:
        t = setup["timings"]
        print(
            f"set-up: {setup['total']:.0f} s (migrate {setup['migrate']:.0f} s, COPY {t['copy']:.0f} s, rollups "
            f"{t['rollup']:.0f} s, indexes {t['indexes']:.0f} s, vacuum {t['vacuum']:.0f} s, billing "
            f"{setup['billing']:.0f} s)"
        )
    c = fx.counts
    print(
        f"tenant: {c['events']:,} events, {c['agent_rollups']:,} per-agent and {c['rollups']:,} per-session "
        f"rollup rows, {c['sessions']:,} sessions; {prepaid['policy']}, ledger {prepaid['ledger_balance']:,.2f}, "
        f"unbilled usage {prepaid['unbilled_usage']:,.2f} USD; holds of {AMOUNT} USD"
    )
    table = []
    for r in sorted(rows, key=lambda r: (r["phase"].startswith("call"), r["phase"], r["offered"])):
        cpu = f"{r['cpu_app']:.1f}+{r['cpu_db']:.1f}" if r["cpu_app"] == r["cpu_app"] else "n/a"
        table.append(
            [
                r["phase"],
                r["kind"],
                f"{r['offered'] / (2 if r['phase'].startswith('call') else 1):g}",
                f"{r['served']:.1f}",
                r["requests"],
                r["errors"] + r["unsent"],
                f"{r['p50']:.1f}",
                f"{r['p95']:.1f}",
                f"{r['p99']:.1f}",
                f"{r['max']:.1f}",
                cpu,
                f"{r['busy_cores']:.2f} ({r['client_cores']:.2f}, {r['other_cores']:.2f})",
                f"{r['load_before']:.1f}→{r['load']:.1f}",
                "yes" if r["p99"] <= TARGET_P99_MS and not r["errors"] else "NO",
            ]
        )
    print_table(
        PHASE_COLUMNS,
        table,
        align="llrrrrrrrrrrrl",
        notes=(
            f"(main phases {args.seconds:g} s, sweep {args.sweep_seconds:g} s; call: authorize at a call's start "
            f"and release {args.call_seconds:g} s later, half the offered rate each; errors: non-2xx, failed or",
            " unsent requests; CPU ms: server CPU per request, gunicorn workers + PostgreSQL backends; cores busy: "
            "the machine's average over the phase, of which the client processes and other processes (neither",
            " the clients nor gunicorn nor the scratch database's backends); load: the 1-minute load average before "
            "the phase → the highest in it)",
        ),
    )
    print_in_process(sql)
    main = {r["phase"]: r for r in rows if r["offered"] == args.rate and not r["phase"].startswith("call")}
    figures = []
    for kind, label in (("balance", f"GET {BALANCE_PATH}"), ("authorize", f"POST {AUTHORIZE_PATH}")):
        r = main[kind]
        figures.append(
            Figure(
                f"{label} p99, {args.clients} clients, {args.rate:g} req/s",
                f"{r['p99']:.1f}",
                "ms",
                f"≤ {TARGET_P99_MS:.0f} ms at 10 M events",
                r["p99"] <= TARGET_P99_MS and not r["errors"],
                f"p50 {r['p50']:.1f}, served {r['served']:.0f}/s, {r['errors']} errors, {r['unsent']} unsent; "
                f"{crossing(rows, kind)}",
            )
        )
    for r in rows:
        if r["phase"].startswith("call"):
            figures.append(
                Figure(
                    f"call cycle: {r['kind']} p99 ({args.rate:g} req/s in all)",
                    f"{r['p99']:.1f}",
                    "ms",
                    f"≤ {TARGET_P99_MS:.0f} ms",
                    r["p99"] <= TARGET_P99_MS and not r["errors"],
                )
            )
    if sql.get("authorize", {}).get("lock_ms"):
        lock = sql["authorize"]["lock_ms"]
        figures.append(
            Figure(
                "authorizations of one tenant, serial ceiling",
                f"{1000 / lock:.0f}",
                "req/s",
                note=f"1 / {lock:.1f} ms with the policy row locked (in-process, one request at a time)",
            )
        )
    if c["events"] < portal.TARGET_EVENTS:
        figures.append(Figure("events of the tenant", f"{c['events']:,}", note="the target is for 10 M"))
    report.figures(figures)


if __name__ == "__main__":
    sys.exit(main())
