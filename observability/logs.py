"""One log format for web, worker and beat (docs/decisions/009-observability.md).

Production writes JSON lines (python-json-logger); development (``DEBUG`` on) may keep plain text. Either
way every line written while an HTTP request is served carries its ``request_id``, and every line written
while a Celery task runs carries ``task_id`` and ``task_name``: :class:`Context` adds them to each record, so
no call site has to pass them.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from celery import current_task, signals
from pythonjsonlogger.json import JsonFormatter

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# What we take from an incoming X-Request-ID (a load balancer's or a client's): a short token of safe
# characters. Anything else, a newline or a megabyte, is replaced by a fresh id and never logged.
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id_from(header: str | None) -> str:
    """The id for a request: the incoming one when well formed, else a new UUID (hex)."""
    if header and _WELL_FORMED.fullmatch(header):
        return header
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str):
    """Make ``request_id`` the current one; returns the token :func:`unbind_request_id` takes back."""
    return _request_id.set(request_id)


def unbind_request_id(token) -> None:
    _request_id.reset(token)


class Context(logging.Filter):
    """Adds the current request id and Celery task to every record that passes a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _request_id.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        task = current_task
        if task and not hasattr(record, "task_id"):
            record.task_id = task.request.id
            record.task_name = task.name
        return True


class ServerErrorsOnly(logging.Filter):
    """For ``django.request``: the access log already has one line per 4xx; keep only the 5xx, which carry
    the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "status_code", 500) >= 500


class Json(JsonFormatter):
    """JSON lines with the fields every line has first (time, level, logger, message), then the extras."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("fmt", ["asctime", "levelname", "name", "message", "process"])
        kwargs.setdefault(
            "rename_fields", {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
        )
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)


class Plain(logging.Formatter):
    """Development: one readable line, with the request or task id in brackets when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(ids)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        ids = [getattr(record, name) for name in ("request_id", "task_id") if getattr(record, name, None)]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def _configure_celery_logging(loglevel=None, **kwargs) -> None:
    """Worker and beat: log through Django's LOGGING (the same handlers and format as the web) instead of
    Celery's own formatters; ``--loglevel`` still sets the level."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


def connect_celery_logging() -> None:
    """A receiver of ``setup_logging`` replaces Celery's logging set-up entirely (its documented hook)."""
    signals.setup_logging.connect(_configure_celery_logging, weak=False)
