import json
import socket

import pytest
from rest_framework.test import APIClient

from billing import invoicing
from tests import livekit_samples as samples
from tests.billing.builders import make_plan, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory, api_key_for
from tests.notifications.receiver import FakeDNS, Receiver


@pytest.fixture
def tenant(db):
    return TenantFactory()


@pytest.fixture
def agent(tenant):
    return AgentFactory(tenant=tenant)


@pytest.fixture
def api_key(agent):
    return api_key_for(agent)


class AgentClient:
    """An HTTP client holding one agent's key; ``post`` sends raw JSON text or an object."""

    def __init__(self, key: str):
        self.key = key
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    def post(self, path: str, body, content_type: str = "application/json"):
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return self.client.generic("POST", path, data, content_type=content_type)

    def put(self, path: str, body):
        return self.client.generic("PUT", path, json.dumps(body), content_type="application/json")

    def get(self, path: str, **params):
        return self.client.get(path, params)


@pytest.fixture
def agent_client(api_key):
    return AgentClient(api_key)


class World:
    """Two tenants with one owner each, usage, a session and a finalized invoice apiece."""

    def __init__(self):
        self.tenants, self.users, self.agents, self.keys, self.invoices = [], [], [], [], []
        sample = samples.load("pipeline_deepgram_openai_cartesia")
        for n in range(2):
            tenant = TenantFactory(timezone="UTC")
            agent = AgentFactory(tenant=tenant)
            key = api_key_for(agent)
            membership = MembershipFactory(tenant=tenant)
            subscribe(tenant, make_plan(f"plan-{tenant.slug}"))
            AgentClient(key).post(
                "/api/v1/livekit/metrics",
                {"session_id": f"call-{n}", "metrics": samples.shifted_metrics(sample)},
            )
            start, _ = invoicing.current_period(tenant)
            invoice = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, start).pk, force=True)
            self.tenants.append(tenant)
            self.users.append(membership.user)
            self.agents.append(agent)
            self.keys.append(key)
            self.invoices.append(invoice)


@pytest.fixture
def world(db):
    return World()


@pytest.fixture
def make_agent_client(db):
    def make(agent=None):
        return AgentClient(api_key_for(agent or AgentFactory()))

    return make


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker consuming the configured broker.

    With a Redis broker (CI, production-like runs) it is a separate ``celery worker`` process pointed at the
    test database; with the in-memory default (a laptop with no Redis) it is Celery's own in-thread test
    worker. Either way tasks go through the broker, serialization and acks — not eager mode.
    """
    import os
    import subprocess
    import time
    import uuid

    from celery.contrib.testing.worker import start_worker
    from django.conf import settings

    from config.celery import app

    if not settings.CELERY_BROKER_URL.startswith("redis"):
        app.conf.result_backend = app.conf.result_backend or "cache+memory://"
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            yield app
        return

    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, DATABASE_URL=process_database_url(), DEBUG="1")
    worker = subprocess.Popen(
        celery_worker_command(queue, "--pool=solo", "--loglevel=WARNING"),
        env=env,
        cwd=settings.BASE_DIR,
    )
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    try:
        deadline = time.monotonic() + 30
        while not app.control.ping(destination=[f"{queue}@{os.uname().nodename}"], timeout=0.5):
            assert worker.poll() is None, "the celery worker exited during start-up"
            assert time.monotonic() < deadline, "the celery worker did not answer a ping within 30 s"
        yield app
    finally:
        app.conf.task_default_queue = previous
        worker.terminate()
        worker.wait(30)


@pytest.fixture(autouse=True)
def _meter_catalogue_survives_flushes(request):
    """Transactional tests end with a flush of every table, which also removes the meter catalogue that a
    migration seeds; put it back for the tests that come after (and for this one)."""
    marker = request.node.get_closest_marker("django_db")
    transactional = (marker is not None and marker.kwargs.get("transaction")) or any(
        name in request.fixturenames for name in ("transactional_db", "live_server", "celery_worker")
    )
    if not transactional:
        yield
        return
    request.getfixturevalue("transactional_db")
    from usage.meters import DEFAULT_METERS, METER_NAMES
    from usage.models import Meter

    Meter.objects.bulk_create(
        [
            Meter(code=c, unit=u, description=d, display_order=i, name=METER_NAMES.get(c, ""))
            for i, (c, u, d) in enumerate(DEFAULT_METERS)
        ],
        ignore_conflicts=True,
    )
    yield


@pytest.fixture
def eager_tasks():
    """Queued tasks run at once in this process, so a test sees what the queued task did."""
    from config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def receiver():
    """A real HTTP server on loopback that records what it receives (tests/notifications/receiver.py)."""
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def fake_dns(monkeypatch):
    """Names the test makes up resolve to the addresses it gives (``fake_dns.names["x.test"] = [...]``)."""
    dns = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    return dns


def process_database_url() -> str:
    """The test database as a DATABASE_URL, for processes the tests start (workers, servers)."""
    from django.db import connection

    db = connection.settings_dict
    return f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT'] or 5432}/{db['NAME']}"


def celery_worker_command(queue: str, *options: str) -> list[str]:
    """A Celery worker of this project that consumes only ``queue`` (a name of the test's own)."""
    import sys

    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        *options,
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
    ]
