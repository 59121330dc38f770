"""Gunicorn server hooks for prometheus_client's multiprocess mode (docs/decisions/009-observability.md).

The shipped gunicorn configuration imports these by name, e.g.::

    from observability.gunicorn import child_exit, logconfig_dict, on_exit, on_starting  # noqa: F401

Importing this module also gives ``PROMETHEUS_MULTIPROC_DIR`` a default (a fresh folder per master) when the
environment has none: with several workers and no shared folder each worker would export only its own counts
and every scrape would see a different, smaller number. It must therefore be imported before anything that
imports ``prometheus_client`` — the config file loads first in the master, so importing it there is enough.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_made_here = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _made_here:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="meterline-metrics-")

# Gunicorn's own lines (boot, worker exits, timeouts) in the same JSON lines as the app's. Its access log stays
# off: the app's middleware writes one access line per request, with the request id.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "observability.logs.Json"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        "discard": {"class": "logging.NullHandler"},
    },
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["discard"], "propagate": False},  # even with --access-logfile
    },
}


def on_starting(server) -> None:
    """Master, before the first worker forks: start from an empty folder, as prometheus_client requires
    (files of a previous run would be added to this one's gauges)."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def child_exit(server, worker) -> None:
    """Master, after a worker exited (also when it was killed): drop its live-gauge files. Its counters stay
    in the folder and keep counting in the sums, as Prometheus expects of a counter."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Master, at shutdown: remove the folder if it is the temporary one made above."""
    if _made_here:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
