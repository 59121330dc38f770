"""A background sender: callers hand over items without waiting; a thread batches, spools and sends them.

``submit_*`` only puts a tuple on a queue, so it is safe to call from an asyncio event loop (LiveKit's event
callbacks run there): no network, no disk, no lock held by I/O. The thread groups metrics per session into
small batches (``batch_size`` items or ``flush_interval`` seconds, whichever comes first), writes each batch
to the durable spool, and sends the spool in order. When the server is unreachable it keeps spooling and
retries the spool with exponential backoff (capped at a minute); nothing is dropped. On interpreter exit
whatever is still queued is written to the spool, to be resent by the next process.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from meterline import _core
from meterline._core import PreparedRequest

logger = logging.getLogger("meterline")

_STOP = "stop"


class BackgroundSender:
    """The sender does no HTTP itself: it is handed the client's delivery steps. ``spool`` writes one request
    to the spool, ``drain`` sends the spool oldest first (with at most the given number of retries per
    request), ``pending`` counts the requests still waiting, and ``is_durable`` says whether the spool
    outlives the process. The ``submit_*``, ``request_flush`` methods may be called from any thread and never
    block; ``flush`` and ``close`` block, as their docstrings say."""

    def __init__(
        self,
        *,
        spool: Callable[[PreparedRequest], object],
        drain: Callable[[int], object],
        pending: Callable[[], int],
        is_durable: bool,
        batch_size: int = 50,
        flush_interval: float = 1.0,
        drain_retries: int = 2,
        max_backoff: float = 60.0,
    ):
        if batch_size < 1 or batch_size > _core.MAX_ITEMS_PER_REQUEST:
            raise ValueError(f"batch_size must be 1–{_core.MAX_ITEMS_PER_REQUEST}")
        self.spool = spool
        self.drain = drain
        self.pending = pending
        self.is_durable = is_durable
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.drain_retries = drain_retries
        self.max_backoff = max_backoff
        self.closed = False
        self._rng = random.Random()
        self._start()
        atexit.register(_spool_at_exit, weakref.ref(self))

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._buffers: dict[str, list[Any]] = {}
        self._deadline: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="meterline-sender", daemon=True)
        self._thread.start()

    def _put(self, op: tuple[Any, ...]) -> None:
        if os.getpid() != self._pid:  # forked (e.g. a job process): the parent's thread does not exist here
            self._start()
        self._queue.put(op)

    # The submit methods check identifiers in the caller's thread, so a bad id raises there (ValueError)
    # instead of being logged by the sending thread.

    def submit_metric(self, session_id: str, metric: Any) -> None:
        """Queue one LiveKit metric (an object or its ``model_dump``) for the session."""
        _core.check_identifier(session_id, "session_id")
        self._put(("metric", session_id, metric))

    def submit_usage(self, session_id: str, usage: Any, timestamp: Any = None) -> None:
        _core.check_identifier(session_id, "session_id")
        self._put(("usage", session_id, usage, timestamp))

    def submit_session(self, session_id: str, fields: dict[str, Any]) -> None:
        _core.prepare_session(session_id, fields)  # raises here for a bad id or field
        self._put(("session", session_id, fields))

    def submit_events(self, events: list[Any]) -> None:
        for index, event in enumerate(events):
            body = event.to_dict() if hasattr(event, "to_dict") else event
            if isinstance(body, Mapping):
                _core.check_event_identifiers(body, f"events[{index}]")
        self._put(("events", events))

    def request_flush(self) -> None:
        """Ask the thread to send what it holds now, without waiting for it."""
        self._put(("flush", None, None))

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is spooled and one delivery attempt made; True when
        nothing is left undelivered. Do not call this on an event loop (use ``asyncio.to_thread``)."""
        done = threading.Event()
        box: dict[str, int] = {}
        self._put(("flush", done, box))
        if not done.wait(timeout):
            return False
        return box.get("pending", 1) == 0

    def close(self, timeout: float | None = 5.0) -> bool:
        if self.closed:
            return True
        done = threading.Event()
        box: dict[str, int] = {}
        self._put((_STOP, done, box))
        finished = done.wait(timeout)
        self.closed = True
        return finished and box.get("pending", 1) == 0

    def _run(self) -> None:
        while True:
            try:
                op = self._queue.get(timeout=self._wait_time())
            except queue.Empty:
                op = None
            try:
                if self._handle(op):
                    return
            except Exception:  # never let the thread die: usage keeps being spooled
                logger.exception("meterline: background sender error")

    def _wait_time(self) -> float | None:
        now = time.monotonic()
        waits = []
        if self._deadline is not None:
            waits.append(self._deadline - now)
        if self._retry_at and self.pending():
            waits.append(self._retry_at - now)
        return max(min(waits), 0.0) if waits else None

    def _handle(self, op: tuple[Any, ...] | None) -> bool:
        spooled = False
        if op is None:
            pass
        elif op[0] == "metric":
            with self._lock:
                buffer = self._buffers.setdefault(op[1], [])
                buffer.append(_core.to_plain(_core.unwrap_metric(op[2])))
                if self._deadline is None:
                    self._deadline = time.monotonic() + self.flush_interval
                if len(buffer) >= self.batch_size:
                    spooled = self._seal(op[1])
        elif op[0] in ("usage", "session", "events"):
            spooled = self._seal_all()  # keep the order: earlier metrics go first
            spooled = self._spool_op(op) or spooled
        elif op[0] in ("flush", _STOP):
            self._seal_all()
            self._try_delivery(force=True)
            done, box = op[1], op[2]
            if box is not None:
                box["pending"] = self.pending()
            if done is not None:
                done.set()
            return op[0] == _STOP
        if self._deadline is not None and time.monotonic() >= self._deadline:
            spooled = self._seal_all() or spooled
        if spooled or (self._retry_at and time.monotonic() >= self._retry_at):
            self._try_delivery(force=False)
        return False

    def _spool_op(self, op: tuple[Any, ...]) -> bool:
        try:
            if op[0] == "usage":
                requests = [_core.prepare_livekit_usage(op[1], op[2], timestamp=op[3], split_invalid=True)]
            elif op[0] == "session":
                requests = [_core.prepare_session(op[1], op[2])]
            else:
                requests = _core.prepare_events(op[1], split_invalid=True)
        except (ValueError, TypeError) as exc:
            logger.error("meterline: cannot encode a %s report: %s", op[0], exc)
            return False
        for request in requests:
            self.spool(request)
        return True

    def _seal(self, session_id: str) -> bool:
        """Turn one session's buffered metrics into spooled batches (caller holds the lock)."""
        metrics = self._buffers.pop(session_id, [])
        if not self._buffers:
            self._deadline = None
        if not metrics:
            return False
        try:
            requests = _core.prepare_livekit_metrics(session_id, metrics, split_invalid=True)
        except (ValueError, TypeError) as exc:
            logger.error(
                "meterline: cannot encode %d LiveKit metrics for session %s: %s",
                len(metrics),
                session_id,
                exc,
            )
            return False
        for request in requests:
            self.spool(request)
        return True

    def _seal_all(self) -> bool:
        with self._lock:
            sealed = False
            for session_id in list(self._buffers):
                sealed = self._seal(session_id) or sealed
            self._deadline = None
            return sealed

    def _try_delivery(self, *, force: bool) -> None:
        if not force and time.monotonic() < self._retry_at:
            return
        try:
            self.drain(self.drain_retries)
        except Exception:
            logger.exception("meterline: delivery error")
        if self.pending():
            self._failures += 1
            ceiling = min(self.max_backoff, 2.0 ** min(self._failures, 10))
            self._retry_at = time.monotonic() + self._rng.uniform(ceiling / 2, ceiling)
        else:
            self._failures = 0
            self._retry_at = 0.0

    def spool_now(self) -> None:
        """Write everything queued or buffered to the spool, without sending (used at interpreter exit)."""
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op[0] == "metric":
                with self._lock:
                    self._buffers.setdefault(op[1], []).append(_core.to_plain(_core.unwrap_metric(op[2])))
            elif op[0] in ("usage", "session", "events"):
                self._seal_all()
                self._spool_op(op)
            elif op[1] is not None:  # a flush or stop someone waits on
                op[1].set()
        self._seal_all()


def _spool_at_exit(ref: weakref.ref[BackgroundSender]) -> None:
    sender = ref()
    if sender is None or sender.closed or os.getpid() != sender._pid:
        return
    try:
        sender.spool_now()
        if not sender.is_durable:  # memory only: one quick attempt, or it is lost
            sender.drain(0)
    except Exception:  # pragma: no cover - best effort at exit
        logger.exception("meterline: could not spool pending usage at exit")
