"""Slow clients (issue 12 item 10): while 20 connections send their headers a line a second, the image's web
server (the Dockerfile's CMD: config/gunicorn.py) keeps answering /healthz. The bound here is generous (5 s)
so a loaded CI machine does not fail it; ``make bench-slow-clients`` measures p50/p99 against the 1 s target.
The same attack stalls the sync workers shipped before, which shows the test attacks for real."""

from __future__ import annotations

import pytest

from bench.server import free_port, start_gunicorn, stop_gunicorn
from bench.slow_clients import SYNC, attack
from tests.deploy.conftest import production_env

CLIENTS = 20
BOUND_SECONDS = 5.0

# The server processes use the test database, which pytest-django creates only for tests that ask for it.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def test_the_shipped_server_keeps_answering_healthz_while_20_clients_send_headers_slowly(image_server):
    probes = attack(image_server.port, CLIENTS, seconds=8, timeout=BOUND_SECONDS)

    assert probes.failures == []
    assert len(probes.latencies) >= 10
    assert probes.slowest < BOUND_SECONDS


def test_the_same_attack_stalls_four_sync_workers(database_url, tmp_path):
    port = free_port()
    proc = start_gunicorn(production_env(database_url), port, SYNC, tmp_path / "gunicorn.log")
    try:
        probes = attack(port, CLIENTS, seconds=2, timeout=3)
    finally:
        stop_gunicorn(proc)

    assert probes.latencies == []
    assert probes.failures
