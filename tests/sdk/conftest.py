"""Fixtures for the Python SDK tests: the SDK talks to the real server through pytest-django's live_server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import meterline
import pytest

from usage import meters as meter_catalogue
from usage.models import Meter

# Quick retries: the behaviour under test is the same, the suite just does not sleep for seconds.
FAST = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}


def ensure_meters() -> None:
    """The default meter catalogue, as the seed migration installs it (live_server tests are transactional,
    and a flush after an earlier transactional test removes the migration-seeded meters)."""
    for order, (code, unit, description) in enumerate(meter_catalogue.DEFAULT_METERS):
        Meter.objects.update_or_create(
            code=code,
            defaults={
                "unit": unit,
                "description": description,
                "display_order": order,
                "name": meter_catalogue.METER_NAMES.get(code, ""),
            },
        )


@pytest.fixture
def server(live_server, transactional_db) -> str:
    ensure_meters()
    return live_server.url


class Recorder(httpx.BaseTransport):
    """A real HTTP transport that also remembers each request (method, path, JSON body) and status."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.calls: list[tuple[str, str, bytes, int | None]] = []
        self.threads: set[int] = set()  # which threads sent requests (never the agent's event loop)
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        with self.lock:
            self.threads.add(threading.get_ident())
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            with self.lock:
                self.calls.append((request.method, request.url.path, body, None))
            raise
        with self.lock:
            self.calls.append((request.method, request.url.path, body, response.status_code))
        return response

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.calls]

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_client(spool_dir: Path, api_key: str) -> Iterator:
    clients: list[meterline.Client] = []

    def make(base_url: str, *, key: str | None = None, record: bool = False, **options) -> meterline.Client:
        options = {**FAST, "spool_dir": spool_dir, **options}
        transport = Recorder() if record else None
        client = meterline.Client(key or api_key, base_url, transport=transport, **options)
        client.recorder = transport
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=2)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def black_hole_url() -> Iterator[str]:
    """A loopback server that accepts connections and never answers (a hung billing server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


def livekit_expected_totals(model_usage: list[dict]) -> dict[tuple[str, str, str], Decimal]:
    """LiveKit's own per-model usage mapped to meters by the server's mapping (usage.meters)."""
    expected: dict[tuple[str, str, str], Decimal] = {}
    for entry in model_usage:
        mapped = meter_catalogue.map_livekit_model_usage(entry)
        if mapped is None:
            continue
        for meter, quantity in mapped.usage.items():
            key = (meter, mapped.provider, mapped.model)
            expected[key] = expected.get(key, Decimal(0)) + quantity
    return {k: v.normalize() for k, v in expected.items() if v}


def per_meter(totals: dict[tuple[str, str, str], Decimal]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for (meter, _, _), quantity in totals.items():
        out[meter] = out.get(meter, Decimal(0)) + quantity
    return {k: v.normalize() for k, v in out.items()}
