"""A real Celery worker with a prefork pool of two: task outcomes from both pool processes add up on the
worker's own scrape port, behind the token; its log lines are JSON with the task id
(docs/decisions/009-observability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import httpx
import pytest
from django.conf import settings

from config.celery import app
from payments import tasks as payment_tasks
from tests.conftest import celery_worker_command, process_database_url
from tests.factories import TenantFactory
from tests.observability.conftest import TOKEN, value
from usage import tasks as usage_tasks

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def prefork_worker(tmp_path, free_tcp_port):
    if not settings.CELERY_BROKER_URL.startswith("redis") or not settings.CELERY_RESULT_BACKEND:
        pytest.skip("needs a Redis broker and result backend shared with a worker process")
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        DATABASE_URL=process_database_url(),
        DEBUG="1",
        LOG_FORMAT="json",
        METRICS_TOKEN=TOKEN,
        METRICS_WORKER_PORT=str(free_tcp_port),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            celery_worker_command(queue, "--pool=prefork", "--concurrency=2", "--loglevel=INFO"),
            env=env,
            cwd=settings.BASE_DIR,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    base = f"http://127.0.0.1:{free_tcp_port}"
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[f"{queue}@{os.uname().nodename}"], timeout=0.5):
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
        yield base, log
    finally:
        app.conf.task_default_queue = previous
        worker.terminate()
        worker.wait(30)


def test_outcomes_of_tasks_run_in_either_pool_process_add_up_on_the_worker_s_scrape_port(prefork_worker):
    base, log = prefork_worker
    tenant = TenantFactory()
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
    assert (
        httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    )

    succeeded = [usage_tasks.verify_rollups.delay(tenant.pk) for _ in range(6)]
    failed = payment_tasks.sync_invoice_to_stripe.delay(-1)  # no such invoice: the task raises
    assert [r.get(timeout=60) for r in succeeded] == [[]] * 6
    assert failed.get(timeout=60, propagate=False) is not None and failed.state == "FAILURE"

    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    tasks = "meterline_celery_tasks_total"
    assert value(text, tasks, task=usage_tasks.verify_rollups.name, outcome="success") == 6
    assert value(text, tasks, task=payment_tasks.sync_invoice_to_stripe.name, outcome="failure") == 1
    assert value(text, "meterline_rollup_checks_total", result="clean") == 6

    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    done = [r for r in records if r.get("task_id") in {s.id for s in succeeded}]
    assert {r["task_id"] for r in done} == {s.id for s in succeeded}
    assert len({r["pid"] for r in done}) >= 1
    (failure,) = [r for r in records if r.get("task_id") == failed.id and r["level"] == "ERROR"]
    assert (
        failure["task_name"] == payment_tasks.sync_invoice_to_stripe.name
        and "DoesNotExist" in failure["exc_info"]
    )
