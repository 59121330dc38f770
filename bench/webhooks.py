"""``make bench-webhooks``: tenant webhooks' two costs (a script, not a test; figures in docs/performance.md).

1. **The outbox on a write path.** A small transaction that changes a row, timed alone and with an event
   recorded in it (``outbox.record``) and dispatched after commit (fan-out to the tenant's endpoints and the
   delivery task queued; the broker is in memory, so the queueing is the client side only): with no endpoint,
   and with one subscribed endpoint. The difference is what recording an event adds to the change.
2. **Delivery throughput** to a fast receiver on loopback (a separate process answering 204): deliveries
   attempted by ``--workers`` threads (each a worker with its own database connection) through the real
   claim, Standard Webhooks signing, ``notifications.outbound.post`` and record, spread over ``--endpoints``
   endpoints with the per-endpoint cap in force. Deliveries/s and latency percentiles.

The scratch database (``meterline_bench_webhooks`` or ``--db-name``) is dropped afterwards.

    .venv/bin/python -m bench.webhooks                       # 2000 writes, 2000 deliveries
    .venv/bin/python -m bench.webhooks --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

from bench import scratch
from bench.measure import load_average, percentile
from bench.report import print_table

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="200 writes and 200 deliveries")
    parser.add_argument("--db-name", default="meterline_bench_webhooks")
    args = parser.parse_args()
    args.db_name = scratch.scratch_name(parser, args.db_name)
    if args.quick:
        args.writes, args.deliveries = 200, 200
    return args


def time_writes(tenant, count: int, record: bool) -> list[float]:
    """Per-transaction seconds of ``count`` small changes, each with an event recorded when ``record``."""
    from django.db import transaction

    from notifications import outbox
    from tenants.models import Tenant

    timings = []
    for n in range(count):
        began = time.perf_counter()
        with transaction.atomic():
            Tenant.objects.filter(pk=tenant.pk).update(billing_email=f"billing{n}@example.com")
            if record:
                outbox.record(tenant.pk, "invoice.paid", {"invoice_id": n, "total": "12.00"})
        timings.append(time.perf_counter() - began)  # on-commit dispatch included: it runs in the commit
    return timings


def write_path(args, tenant, url: str) -> list[list[str]]:
    from notifications import webhooks
    from notifications.models import WebhookEndpoint

    rows = []
    time_writes(tenant, 50, record=True)  # warm up
    cases = [("change alone", False, 0), ("+ event, no endpoint", True, 0), ("+ event, 1 endpoint", True, 1)]
    baseline = None
    for name, record, endpoints in cases:
        WebhookEndpoint.objects.filter(tenant=tenant).delete()
        for _ in range(endpoints):
            webhooks.create_endpoint(tenant, url)
        timings = time_writes(tenant, args.writes, record)
        median = statistics.median(timings) * 1000
        baseline = baseline if baseline is not None else median
        rows.append(
            [
                name,
                f"{median:.2f}",
                f"{percentile(timings, 0.95) * 1000:.2f}",
                f"{median - baseline:+.2f}",
                f"{len(timings) / sum(timings):.0f}",
            ]
        )
    WebhookEndpoint.objects.filter(tenant=tenant).delete()
    return rows


def throughput(args, tenant, url: str) -> dict:
    from django.db import connection

    from notifications import outbox, webhooks
    from notifications.models import Event, WebhookDelivery

    endpoints = [webhooks.create_endpoint(tenant, url) for _ in range(args.endpoints)]
    per_endpoint = args.deliveries // len(endpoints)
    events = Event.objects.bulk_create(
        [Event(tenant=tenant, type="invoice.paid", data={"invoice_id": n}) for n in range(per_endpoint)]
    )
    for event in events:
        outbox.dispatch(event.pk)  # fan-out: one delivery per endpoint (the queued tasks go to memory)
    ids = list(WebhookDelivery.objects.filter(status="pending").order_by("pk").values_list("pk", flat=True))
    queue, lock, latencies, states = list(ids), threading.Lock(), [], {}

    def worker():
        while True:
            with lock:
                if not queue:
                    break
                delivery_id = queue.pop(0)
            began = time.perf_counter()
            state = webhooks.attempt_delivery(delivery_id).state
            with lock:
                latencies.append(time.perf_counter() - began)
                states[state] = states.get(state, 0) + 1
                if state == "busy":
                    queue.append(delivery_id)
        connection.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    delivered = WebhookDelivery.objects.filter(status="delivered").count()
    return {
        "deliveries": len(ids),
        "delivered": delivered,
        "seconds": elapsed,
        "per_second": delivered / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "states": states,
    }


def main() -> int:
    args = parse_args()
    scratch.exit_on_sigterm()
    load_start = load_average()
    receiver = subprocess.Popen(  # noqa: S603 - our own interpreter and a constant script
        [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
    )
    port = int(receiver.stdout.readline())
    url = f"http://127.0.0.1:{port}/hooks"
    with scratch.database_server() as (admin_url, server):
        bench_url = scratch.with_database(admin_url, args.db_name)
        try:
            scratch.recreate_database(admin_url, args.db_name)
            env = scratch.app_env(
                bench_url,
                OUTBOUND_ALLOW_PRIVATE_NETWORKS="1",
                WEBHOOKS_ALLOW_HTTP="1",
                WEBHOOKS_MAX_CONCURRENT_PER_ENDPOINT="4",
            )
            scratch.migrate(env)
            scratch.setup_django(env)
            from tenants.models import Tenant

            tenant = Tenant.objects.create(name="Bench", slug="bench", currency="USD")
            writes = write_path(args, tenant, url)
            delivery = throughput(args, tenant, url)
        finally:
            scratch.close_django()
            scratch.drop_database(admin_url, args.db_name)
            receiver.terminate()
    print(f"\n== Tenant webhooks (PostgreSQL via {server}) ==")
    print(f"\nOutbox on a write path: {args.writes} transactions per case (one UPDATE each)")
    print_table(["case", "median ms", "p95 ms", "added ms", "tx/s"], writes)
    print(
        f"\nDelivery to a local receiver: {delivery['deliveries']} deliveries, {args.workers} workers, "
        f"{args.endpoints} endpoints, at most 4 in flight per endpoint"
    )
    print_table(
        ["delivered", "seconds", "deliveries/s", "p50 ms", "p95 ms"],
        [
            [
                str(delivery["delivered"]),
                f"{delivery['seconds']:.1f}",
                f"{delivery['per_second']:.0f}",
                f"{delivery['p50_ms']:.1f}",
                f"{delivery['p95_ms']:.1f}",
            ]
        ],
    )
    print(f"attempt outcomes: {delivery['states']}")
    print(f"load average: {load_start:.1f} at the start, {load_average():.1f} at the end")
    print("\nJSON: " + json.dumps({"writes": writes, "delivery": delivery}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
