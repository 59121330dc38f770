"""Celery task outcomes as metrics, from Celery's signals (no task has to know), and the worker's own
scrape endpoint (docs/decisions/009-observability.md).

Tasks run in the worker's pool processes; with ``PROMETHEUS_MULTIPROC_DIR`` set they write their counts to
files there, and the worker's main process serves the sum on ``METRICS_WORKER_PORT`` behind the same bearer
token as the web's ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import signals
from django.conf import settings

from observability import metrics

logger = logging.getLogger(__name__)


def _task_name(sender) -> str:
    return getattr(sender, "name", None) or str(sender)


def _on_success(sender=None, **kwargs) -> None:
    metrics.CELERY_TASKS.labels(_task_name(sender), "success").inc()


def _on_failure(sender=None, **kwargs) -> None:
    metrics.CELERY_TASKS.labels(_task_name(sender), "failure").inc()


def _on_retry(sender=None, **kwargs) -> None:
    metrics.CELERY_TASKS.labels(_task_name(sender), "retry").inc()


def _on_pool_process_exit(**kwargs) -> None:
    if metrics.is_multiprocess():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # scrapes every few seconds are not news
        pass


def _worker_metrics_app(environ, start_response):
    from observability.views import bearer_matches

    if environ.get("PATH_INFO") != "/metrics":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not Found\n"]
    if not bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), settings.METRICS_TOKEN):
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"Unauthorized\n"]
    start_response("200 OK", [("Content-Type", metrics.CONTENT_TYPE_LATEST)])
    return [metrics.exposition(scrape_gauges=False)]


def _serve_worker_metrics(**kwargs) -> None:
    """In the worker's main process once it is ready: serve the pool's metrics, if configured."""
    port = settings.METRICS_WORKER_PORT
    if not port or not settings.METRICS_TOKEN:
        return
    server = make_server(
        settings.METRICS_WORKER_ADDRESS,
        port,
        _worker_metrics_app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("worker metrics on %s:%s/metrics", settings.METRICS_WORKER_ADDRESS, server.server_port)


def connect() -> None:
    """Called once from ``ObservabilityConfig.ready``; ``weak=False`` because the receivers are module-level
    functions that must outlive any reference to them."""
    signals.task_success.connect(_on_success, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    signals.worker_process_shutdown.connect(_on_pool_process_exit, weak=False)
    signals.worker_ready.connect(_serve_worker_metrics, weak=False)
