"""docker-compose.yml cannot be run on CI (no Docker engine); this keeps its promised shape checked."""

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_runs_postgres_redis_web_worker_and_beat_with_health_checks_from_one_image():
    services = yaml.safe_load(COMPOSE.read_text())["services"]

    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    assert all("healthcheck" in services[name] for name in ("postgres", "redis", "web", "worker", "beat"))
    assert len({services[name]["image"] for name in ("web", "worker", "beat")}) == 1
    assert "gunicorn" in services["web"]["command"] and "worker" in services["worker"]["command"]
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and env["CELERY_BROKER_URL"].startswith(
            "redis://"
        )
        assert env["DEBUG"] == "0"
