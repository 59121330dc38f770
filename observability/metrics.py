"""The Prometheus metrics of Meterline, and the few calls that record them (docs/decisions/009-observability.md).

This app sits below every domain app (import-linter), so the domain can report what only it knows (rollup
drift, a failed Stripe sync) without knowing how it is exported. Most metrics are recorded at the edges
instead: the request middleware, the ingest view (from its result, once per batch) and Celery's task signals.

Under gunicorn and Celery's prefork pool each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode); :func:`exposition` sums them per scrape.
The variable has to be in the environment before ``prometheus_client`` is first imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "gauge_at_scrape"]

HTTP_REQUESTS = Counter(
    "meterline_http_requests",
    "HTTP requests answered, by URL name (endpoint), method and status code.",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "meterline_http_request_duration_seconds",
    "Time from the first middleware to the response, by URL name (endpoint).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INGEST_EVENTS = Counter(
    "meterline_ingest_events",
    "Events in stored ingest batches, by endpoint and outcome (accepted, duplicate, conflict).",
    ["endpoint", "outcome"],
)
CELERY_TASKS = Counter(
    "meterline_celery_tasks",
    "Celery task runs by task name and outcome (success, failure, retry).",
    ["task", "outcome"],
)
STRIPE_SYNC_FAILURES = Counter(
    "meterline_stripe_sync_failures",
    "Failed pushes of an invoice to Stripe: transient ones are retried, permanent ones wait for an operator.",
    ["kind"],
)
ROLLUP_CHECKS = Counter(
    "meterline_rollup_checks",
    "Tenants whose rollups verify_rollups checked, by result (clean, drift).",
    ["result"],
)
ROLLUP_DRIFT_GROUPS = Counter(
    "meterline_rollup_drift_groups",
    "Rollup groups that verify_rollups found different from the raw events (any increase is a bug).",
    ["rollup"],
)

_scrape_gauges: dict[str, tuple[str, Callable[[], float]]] = {}


def record_ingest(endpoint: str, accepted: int, duplicates: int, conflicts: int) -> None:
    """Count one stored batch's events: three increments per batch, never work per event."""
    for outcome, count in (("accepted", accepted), ("duplicate", duplicates), ("conflict", conflicts)):
        if count:
            INGEST_EVENTS.labels(endpoint, outcome).inc(count)


def record_rollup_check(drift: Iterable[dict]) -> None:
    """Count one tenant's rollup check and every drifted group it found (each names its ``rollup`` table)."""
    groups = list(drift)
    ROLLUP_CHECKS.labels("drift" if groups else "clean").inc()
    for group in groups:
        ROLLUP_DRIFT_GROUPS.labels(group.get("rollup", "unknown")).inc()


def record_stripe_sync_failure(kind: str) -> None:
    STRIPE_SYNC_FAILURES.labels(kind).inc()


def gauge_at_scrape(name: str, documentation: str, read: Callable[[], float]) -> None:
    """Export a gauge whose value ``read`` computes when Prometheus scrapes (a count in the database: the
    same in every process, so it is read once per scrape rather than kept per process)."""
    _scrape_gauges[name] = (documentation, read)


class _ScrapeGauges:
    def collect(self) -> Iterable[Metric]:
        for name, (documentation, read) in sorted(_scrape_gauges.items()):
            yield GaugeMetricFamily(name, documentation, value=read())


class _ThisProcess:
    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()


def is_multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(*, scrape_gauges: bool = True) -> bytes:
    """The text Prometheus scrapes: every process's values (multiprocess mode) or this process's, plus the
    scrape-time gauges."""
    registry = CollectorRegistry()
    if is_multiprocess():
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    if scrape_gauges:
        registry.register(_ScrapeGauges())
    return generate_latest(registry)
