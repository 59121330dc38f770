"""The shipped multiprocess set-up under a real gunicorn with two workers, DEBUG off: every scrape, whichever
worker answers it, sees the sum of all workers' counts, also after a worker is killed; every line on stderr
is JSON, and each request's lines carry its id (docs/decisions/009-observability.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from django.conf import settings
from django.db import connection

from tests.factories import AgentFactory, api_key_for
from tests.observability.conftest import TOKEN, value
from tests.usage.builders import event

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def gunicorn(tmp_path, free_tcp_port):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier run")  # on_starting must clear it
    db = connection.settings_dict
    env = dict(
        os.environ,
        DATABASE_URL=f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT'] or 5432}/{db['NAME']}",
        DEBUG="0",
        SECRET_KEY="gunicorn-test-secret-key-" + "x" * 40,
        API_KEY_HMAC_SECRET=settings.API_KEY_HMAC_SECRET,  # keys made here must verify there
        SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS="127.0.0.1",
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        STATIC_ROOT=str(
            tmp_path
        ),  # exists: WhiteNoise would warn (a line that is not JSON) about a missing one
    )
    env.pop("LOG_FORMAT", None)
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "config.wsgi", "-c", "python:observability.gunicorn"),
                *("--workers", "2", "--bind", f"127.0.0.1:{free_tcp_port}"),
                *("--access-logfile", "-"),  # as the Dockerfile had it: must not add a second access line
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{free_tcp_port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code in (200, 503):
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    try:
        yield base, proc, log, metrics_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def scrape(base: str) -> str:
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200
    return response.text


def workers_of(proc: subprocess.Popen) -> list[int]:
    return [child.pid for child in psutil.Process(proc.pid).children()]


def test_counts_from_every_worker_add_up_in_every_scrape_and_survive_a_worker_kill(gunicorn):
    base, proc, log, metrics_dir = gunicorn
    key = api_key_for(AgentFactory())
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
    sent_ids, previous = [], []
    for n in range(12):
        fresh = [event(f"g-{n}-{i}") for i in range(3)]
        batch = {"events": fresh + previous[:1]}  # each batch resends the previous one's first event
        response = httpx.post(f"{base}/api/v1/events", json=batch, headers=auth, timeout=30)
        assert response.status_code == 200, response.text
        sent_ids.append(response.headers["X-Request-ID"])
        previous = fresh
    accepted, duplicates = 12 * 3, 11
    not_found = httpx.get(f"{base}/no-such-page/", headers={"X-Request-ID": "probe-404"}, timeout=10)
    assert not_found.status_code == 404

    def counts(text: str) -> tuple[float, float, float]:
        return (
            value(text, "meterline_ingest_events_total", outcome="accepted"),
            value(text, "meterline_ingest_events_total", outcome="duplicate"),
            value(text, "meterline_http_requests_total", endpoint="api-events", status="200"),
        )

    for _ in range(6):  # whichever worker answers
        assert counts(scrape(base)) == (accepted, duplicates, 12)

    lines = [
        json.loads(line) for line in log.read_text().splitlines()
    ]  # every line of stdout and stderr is JSON
    access = [
        line for line in lines if line["logger"] == "meterline.access" and line["path"] == "/api/v1/events"
    ]
    assert sorted(line["request_id"] for line in access) == sorted(sent_ids)
    assert len({line["pid"] for line in access}) == 2, "both workers should have served batches"
    assert [line["status"] for line in lines if line.get("request_id") == "probe-404"] == [404]
    assert sum("/no-such-page/" in json.dumps(line) for line in lines) == 1

    victim = workers_of(proc)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in workers_of(proc) or len(workers_of(proc)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for _ in range(6):
        assert counts(scrape(base)) == (accepted, duplicates, 12)
    assert not (metrics_dir / "counter_999999.db").exists()
