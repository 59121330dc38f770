"""The image the Dockerfile builds, performed in a temporary folder (tests/deploy/dockerfile.py), and its CMD
serving on loopback with production settings against the test database."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.server import free_port, start_server, stop_gunicorn
from tests.deploy.dockerfile import Build, Dockerfile, build


@dataclass
class Server:
    url: str
    port: int
    log: Path


@pytest.fixture(scope="session")
def database_url(django_db_setup, django_db_blocker) -> str:
    """The (migrated) test database as a URL, for the processes a test starts."""
    from django.db import connection

    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    host = db["HOST"].replace("/", "%2F") or "127.0.0.1"
    return f"postgresql://{db['USER']}{password}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


def production_env(database_url: str) -> dict[str, str]:
    return {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "memory://"),
    }


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Build:
    return build(Dockerfile.read(), tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def image_server(image, database_url, tmp_path_factory) -> Iterator[Server]:
    """The Dockerfile's CMD started in the built folder (DEBUG off), bound to loopback."""
    port = free_port()
    log = tmp_path_factory.mktemp("image-server") / "server.log"
    dockerfile = Dockerfile.read()
    proc = start_server(
        image.command(dockerfile.cmd, f"127.0.0.1:{port}"),
        image.folder,
        image.env(dockerfile, **production_env(database_url)),
        port,
        log,
    )
    try:
        yield Server(f"http://127.0.0.1:{port}", port, log)
    finally:
        stop_gunicorn(proc)
