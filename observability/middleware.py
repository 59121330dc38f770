"""The request's id, its access-log line and its HTTP metrics, in one middleware placed first so that it
sees every request and the final status (docs/decisions/009-observability.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from observability import logs, metrics

access_log = logging.getLogger("meterline.access")

# A client chooses the method; an unknown one is counted as "other" so it cannot mint new series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestObservabilityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id = logs.request_id_from(request.headers.get("X-Request-ID"))
        request.request_id = request_id
        token = logs.bind_request_id(request_id)
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            elapsed = time.perf_counter() - started
            match = getattr(request, "resolver_match", None)
            endpoint = (match.view_name or match.route) if match else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            metrics.HTTP_REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
            metrics.HTTP_LATENCY.labels(endpoint).observe(elapsed)
            access_log.info(
                '"%s %s" %s',
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 1),
                    "endpoint": endpoint,
                    "remote_addr": request.META.get("REMOTE_ADDR", ""),
                },
            )
            return response
        finally:
            logs.unbind_request_id(token)
