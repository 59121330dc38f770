"""docker-compose.yml cannot be run here (no Docker engine): its shape is checked, and that it runs what the
Dockerfile builds (tests/deploy/test_dockerfile.py performs that build) with the shipped server configuration."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from tests.deploy.dockerfile import BASE, Dockerfile

COMPOSE = BASE / "docker-compose.yml"
OFFICIAL_IMAGES = {"postgres", "redis"}


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_runs_postgres_redis_web_worker_and_beat_with_health_checks_from_one_image():
    found = services()

    assert {"postgres", "redis", "web", "worker", "beat"} <= set(found)
    assert all("healthcheck" in found[name] for name in ("postgres", "redis", "web", "worker", "beat"))
    assert len({found[name]["image"] for name in ("web", "worker", "beat")}) == 1
    assert (
        found["worker"]["command"][:3] == ["celery", "-A", "config"]
        and "worker" in found["worker"]["command"]
    )
    assert found["beat"]["command"][:3] == ["celery", "-A", "config"] and "beat" in found["beat"]["command"]
    for name in ("web", "worker", "beat"):
        env = found[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert env["DEBUG"] == "0"


def test_every_service_not_from_an_official_image_is_built_from_the_projects_dockerfile():
    for name, service in services().items():
        if service["image"].split(":")[0] in OFFICIAL_IMAGES:
            assert "build" not in service, name
            continue
        build = service["build"]
        context = build if isinstance(build, str) else build["context"]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (COMPOSE.parent / context / dockerfile).resolve() == BASE / "Dockerfile", name


def test_web_runs_the_images_command_with_the_shipped_server_configuration():
    web = services()["web"]["command"]
    config = web[web.index("--config") + 1]
    module = importlib.import_module(config.removeprefix("python:"))

    assert web == Dockerfile.read().cmd
    assert web[0] == "gunicorn" and config.startswith("python:")
    assert module.worker_class == "gthread" and module.threads > 1
    assert services()["web"]["ports"][0].split(":")[-1] == Dockerfile.read().all("EXPOSE")[0]


def test_the_commands_compose_runs_exist_in_the_image():
    copied = {Path(source).name for sources, _ in Dockerfile.read().copies for source in sources}
    for name, service in services().items():
        command = service.get("command", [])
        if command[:2] == ["python", "manage.py"]:
            assert "manage.py" in copied, name
    web_check = services()["web"]["healthcheck"]["test"]
    assert web_check[1] == "curl" and any(
        "install" in run and " curl" in run for run in Dockerfile.read().all("RUN")
    )
