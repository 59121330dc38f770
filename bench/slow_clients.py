"""``make bench-slow-clients``: does the shipped web server keep answering while clients send their headers
slowly (issue 12, DESIGN §16)? A script with a printed report, not a timed test; tests/deploy keeps a short,
generously bounded run of the same attack in CI.

It starts gunicorn on loopback with the shipped configuration (``config/gunicorn.py``, DEBUG off), opens
``--clients`` connections (20) that each send a request line and then one header line a second for
``--seconds`` (30), reconnecting when the server closes one, and meanwhile requests ``/healthz`` on a fresh
connection every 0.1 s. It prints p50, p99 and max latency and the failures (5 s timeout). Target: p99 < 1 s.
``--sync`` runs the same attack against the configuration shipped before (4 sync workers) for comparison.

Only loopback is ever attacked, and the attack stops after ``--seconds``. Database: the server of
``DATABASE_URL`` (its ``postgres`` database: ``/healthz`` only runs ``SELECT 1``), else see
bench.scratch.database_server.

    .venv/bin/python -m bench.slow_clients
    .venv/bin/python -m bench.slow_clients --clients 50 --seconds 60
    .venv/bin/python -m bench.slow_clients --sync --seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import scratch
from bench.measure import percentile
from bench.report import Figure, Report
from bench.server import free_port, start_gunicorn, stop_gunicorn

TARGET_P99_SECONDS = 1.0
SHIPPED = ["--config", "python:config.gunicorn"]
# What docker-compose.yml ran before config/gunicorn.py: the configuration the attack stalled.
SYNC = ["--worker-class", "sync", "--workers", "4", "--threads", "1"]


@dataclass
class Probes:
    """``/healthz`` as a load balancer sees it during the attack."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered with 200
    failures: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    @property
    def slowest(self) -> float:
        return max(self.latencies, default=float("nan"))


class SlowClients:
    """Connections to 127.0.0.1:``port`` that never finish their request headers: a request line at once,
    then one header line a second per connection, until ``stop``. One thread drives them all."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        return sock

    def _run(self) -> None:
        sockets = [self._open() for _ in range(self.count)]
        line = 0
        try:
            while not self._stop.wait(1.0):
                line += 1
                for i, sock in enumerate(sockets):
                    try:
                        sock.sendall(f"X-Slow-{line}: {line}\r\n".encode())
                    except OSError:  # the server gave up on this one: a real attacker comes back
                        sock.close()
                        sockets[i] = self._open()
                        self.reconnects += 1
        finally:
            for sock in sockets:
                sock.close()


def probe_healthz(port: int, seconds: float, timeout: float = 5.0, interval: float = 0.1) -> Probes:
    """``GET /healthz`` on a fresh connection every ``interval`` for ``seconds``."""
    probes = Probes()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                probes.latencies.append(time.monotonic() - began)
            else:
                probes.failures.append(f"HTTP {response.status}: {body[:200].decode(errors='replace')}")
        except OSError as exc:
            probes.failures.append(f"{type(exc).__name__} after {time.monotonic() - began:.1f} s")
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    return probes


def attack(port: int, clients: int, seconds: float, timeout: float = 5.0) -> Probes:
    """Probe ``/healthz`` while ``clients`` slow connections are open (given 2 s to settle first)."""
    with SlowClients(port, clients):
        time.sleep(2)
        return probe_healthz(port, seconds, timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="slow connections (default 20)")
    parser.add_argument("--seconds", type=float, default=30, help="probing time during the attack (30)")
    parser.add_argument("--sync", action="store_true", help="attack the former 4 sync workers instead")
    args = parser.parse_args()
    scratch.exit_on_sigterm()
    report = Report("Slow clients against the shipped web server", targets="issue 12")
    options = SYNC if args.sync else SHIPPED
    proc = None
    with tempfile.TemporaryDirectory() as tmp, scratch.database_server() as (admin_url, server):
        try:
            port = free_port()
            proc = start_gunicorn(scratch.app_env(admin_url), port, options, Path(tmp) / "gunicorn.log")
            baseline = probe_healthz(port, 3)
            probes = attack(port, args.clients, args.seconds)
        finally:
            stop_gunicorn(proc)
    report.header(
        f"server: gunicorn {' '.join(options)} on 127.0.0.1, DEBUG off; database: {server}",
        f"attack: {args.clients} connections, one header line a second each, {args.seconds:.0f} s of probes",
    )
    ms = 1000
    report.figures(
        [
            Figure("/healthz p50, no attack", f"{baseline.p50 * ms:.0f}", "ms"),
            Figure("/healthz p50 during the attack", f"{probes.p50 * ms:.0f}", "ms"),
            Figure(
                "/healthz p99 during the attack",
                f"{probes.p99 * ms:.0f}",
                "ms",
                f"< {TARGET_P99_SECONDS * ms:.0f} ms",
                bool(probes.latencies) and not probes.failures and probes.p99 < TARGET_P99_SECONDS,
            ),
            Figure("/healthz max during the attack", f"{probes.slowest * ms:.0f}", "ms"),
            Figure("/healthz answered", f"{len(probes.latencies)}", "requests"),
            Figure(
                "/healthz failed (5 s timeout)",
                f"{len(probes.failures)}",
                "requests",
                note=", ".join(sorted(set(probes.failures)))[:120],
            ),
        ]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
