"""gunicorn serving ``config.wsgi`` on loopback for the HTTP benchmarks, stopped whatever happens."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.scratch import BASE, PYTHON


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(env: dict[str, str], port: int, options: list[str], log: Path) -> subprocess.Popen:
    """gunicorn in its own process group with these settings and options, once ``/healthz`` answers; its
    output goes to ``log`` (its tail is shown if it fails to start)."""
    command = [
        PYTHON,
        "-m",
        "gunicorn",
        "config.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    return start_server([*command, *options], BASE, {**os.environ, **env}, port, log)


def start_server(
    command: list[str], cwd: Path, env: dict[str, str], port: int, log: Path
) -> subprocess.Popen:
    """A server listening on 127.0.0.1:``port`` started by ``command``, once its ``/healthz`` answers (also
    how tests/deploy starts the Dockerfile's CMD)."""
    with log.open("w") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and server
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz", headers={"X-Forwarded-Proto": "https"})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status in (200, 503):  # it answers (503: a dependency is down; the checks will tell)
                return proc
            last = f"HTTP {response.status}: {body[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    stop_gunicorn(proc)
    raise RuntimeError(f"the server did not answer within 60 s ({last}):\n{log.read_text()[-3000:]}")


def stop_gunicorn(proc: subprocess.Popen | None) -> None:
    """Graceful shutdown of the arbiter and its workers; killed after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
