"""The web server's configuration, the one the Dockerfile, docker-compose.yml and docs/operations.md run:
``gunicorn --config python:config.gunicorn config.wsgi``.

Threaded workers, because a sync worker belongs to one connection from its first byte to its response: four
of them are stalled by four clients that send their headers a line a second. A gthread worker's main thread
accepts connections and hands each to a thread, so a slow client holds one thread, not the process.
``worker_connections`` equal to ``threads`` makes a worker stop accepting while every thread is busy, so new
connections go to a worker with a free thread instead of queueing behind slow ones. The server therefore
keeps answering while fewer than ``workers × threads`` connections are slow; beyond that a buffering proxy
or load balancer in front is the defence (docs/operations.md, with the measured figures).

Environment: ``PORT`` (8000), ``WEB_CONCURRENCY`` (processes, 4), ``GUNICORN_THREADS`` (per process, 16).
Each thread that serves a request keeps its own PostgreSQL connection for ``DB_CONN_MAX_AGE`` seconds, so
``workers × threads`` plus the Celery processes must stay below the server's ``max_connections``.
"""

import os

# prometheus_client's multiprocess mode: the workers' metrics summed on every scrape, a dead worker's files
# cleaned up, gunicorn's own lines in the app's JSON format (observability/gunicorn.py).
from observability.gunicorn import child_exit, logconfig_dict, on_exit, on_starting  # noqa: F401

bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
worker_connections = threads
# Keep-alive connections would hold the slots above while idle; the load balancer in front keeps clients'
# connections alive, and a fresh connection to gunicorn on loopback or a private network costs little.
keepalive = 0
# A worker whose main loop stops reporting (not a slow request: threads do not block the heartbeat) is
# replaced after this many seconds.
timeout = 30
graceful_timeout = 30
# The app writes one access line per request (observability.middleware), with its request id.
accesslog = None
