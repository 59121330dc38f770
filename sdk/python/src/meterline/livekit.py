"""Bill a LiveKit ``AgentSession`` with two lines::

    billing = meterline.Client()                      # METERLINE_API_KEY / METERLINE_BASE_URL
    meterline.livekit.attach(session, billing, session_id=ctx.job.id, end_user_id=caller_id)

Two ways to report a session, never both for one session (the server refuses the second with 409):

``mode="metrics"`` (default)
    Every metrics object LiveKit emits (``metrics_collected``: one per LLM request, TTS segment, STT report,
    realtime response) is forwarded in small batches by a background thread, so spend is visible while the
    call runs and each request is kept (cancelled ones, tool calls, timestamps). The server derives an id
    from each metric's natural key, so resends and LiveKit's duplicate emissions after handoffs count once.
``mode="usage"``
    Only LiveKit's per-model totals (``AgentSession.usage``, livekit-agents ≥ 1.5) are sent, once, when the
    session closes. Fewer requests, no per-request detail, nothing visible until the call ends.

Across 1.x releases: ``metrics_collected`` exists in every 1.x release and is the only per-request stream, so
metrics mode uses it (LiveKit deprecated it in 1.5 in favour of ``session_usage_updated``, which carries only
running totals; its deprecation warning is silenced for this subscription only). ``session_usage_updated`` is
followed too: if a release stops emitting ``metrics_collected`` altogether, the session's final totals are
sent as a usage report at close instead — still one way per session. Usage mode on a release without
per-model usage (< 1.5) falls back to metrics mode with a warning.

Never blocks or breaks the agent: event callbacks only copy the metric and put it on a queue; all network
and disk work happens on the sender thread; every callback swallows (and logs) its own errors; when the
server is down, usage goes to the durable spool and is resent later (see ``meterline.Client``).
The session's start, end and end-user id are reported with ``PUT /api/v1/sessions/{id}``.

Pre-call holds (``authorize=Authorize(amount=… | expected_seconds=…)``, decision 018): a thread of the
session's own asks the server to hold the call's expected cost when ``attach`` runs, extends the hold every
``extend_every`` seconds while the call runs, and releases it at close (the server also releases it when the
session's end arrives, and lets it lapse ``ttl_seconds`` after the last extension if the agent dies). When a
prepaid-hard policy refuses the hold, ``on_refused(error)`` is called once with the
``InsufficientBalanceError`` — on the event loop ``attach`` ran on, so it may use the session (a coroutine
function is scheduled there as a task) — and the hold is not asked for again; without a handler a warning is
logged. The call always goes on unless the handler ends it: usage is never refused. An unreachable or failing
server is logged and asked again at the next tick; the handler's own errors are logged and swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from meterline import _core
from meterline.client import AsyncClient, Client
from meterline.errors import (
    ConflictError,
    InsufficientBalanceError,
    MeterlineError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)

logger = logging.getLogger("meterline")

Mode = Literal["metrics", "usage"]
DEFAULT_EXCLUDED_TYPES = frozenset({"vad_metrics"})  # ~1/s per session, diagnostics only, never billed

_attached: weakref.WeakKeyDictionary[Any, SessionBilling] = weakref.WeakKeyDictionary()
_DEPRECATION_PREFIX = "metrics_collected is deprecated"
MIN_TTL_SECONDS, MAX_TTL_SECONDS = 60, 86_400  # what POST /api/v1/authorizations accepts
MAX_EXPECTED_SECONDS = 86_400
MAX_EXTEND_EVERY = 30.0  # a failed extension is tried again within this long, well before the hold lapses


@dataclass(frozen=True)
class Authorize:
    """A pre-call hold for ``attach(..., authorize=Authorize(...))``: asked for when the session starts, kept
    while it runs, released at close (see the module docstring).

    Exactly one of ``amount`` (in the tenant's currency, whole minor units) or ``expected_seconds`` (the server
    holds that much of the tenant's recent cost per second of call). ``ttl_seconds`` (60 s – 24 h) is how long
    the hold outlives the last extension, i.e. an agent that died. ``extend_every`` defaults to half the TTL,
    at most 30 s. ``on_refused(error)`` receives the ``InsufficientBalanceError`` (``available``,
    ``required``, ``currency``); it may be a coroutine function. Invalid values raise ValueError here."""

    amount: Decimal | str | int | None = None
    expected_seconds: Decimal | str | float | None = None
    ttl_seconds: int = 300
    on_refused: Callable[[InsufficientBalanceError], Any] | None = None
    extend_every: float | None = None

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.expected_seconds is None):
            raise ValueError("Authorize needs exactly one of amount or expected_seconds")
        if self.amount is not None:
            object.__setattr__(self, "amount", _positive_decimal(self.amount, "amount"))
        else:
            seconds = _positive_decimal(self.expected_seconds, "expected_seconds")
            if seconds > MAX_EXPECTED_SECONDS:
                raise ValueError(f"expected_seconds must be at most {MAX_EXPECTED_SECONDS}")
            object.__setattr__(self, "expected_seconds", seconds)
        ttl = self.ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
            raise ValueError(
                f"ttl_seconds must be a whole number of seconds, {MIN_TTL_SECONDS}–{MAX_TTL_SECONDS}"
            )
        every = self.extend_every
        if every is not None and (
            isinstance(every, bool)
            or not isinstance(every, int | float)
            or not math.isfinite(every)
            or not 0 < every < ttl
        ):
            raise ValueError("extend_every must be a number of seconds above 0 and below ttl_seconds")
        if self.on_refused is not None and not callable(self.on_refused):
            raise ValueError("on_refused must be callable")

    @property
    def interval(self) -> float:
        """Seconds between two extensions of the hold."""
        if self.extend_every is not None:
            return float(self.extend_every)
        return min(self.ttl_seconds / 2, MAX_EXTEND_EVERY)


def _positive_decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive number")
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError(f"{name} must be a positive number") from None
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{name} must be a positive number")
    return number


class SessionBilling:
    """What ``attach`` returns: the link between one LiveKit session and Meterline."""

    def __init__(
        self,
        session: Any,
        client: Client,
        *,
        session_id: str,
        mode: Mode,
        exclude_types: frozenset[str],
        batch_size: int,
        flush_interval: float,
    ):
        self.session_id = session_id
        self.mode: Mode = mode
        self.exclude_types = exclude_types
        self.client = client
        self.sender = client.background(batch_size=batch_size, flush_interval=flush_interval)
        self._session_ref = weakref.ref(session) if _weakrefable(session) else (lambda: session)
        self._handlers: list[tuple[str, Any]] = []
        self.metrics_seen = 0  # metrics_collected events received (forwarded or excluded)
        self.metrics_forwarded = 0
        self.usage_reported = False
        self.closed = False
        self._last_usage: Any = None
        self._errors_logged = 0
        self.hold: dict[str, Any] | None = None  # the server's last answer about this call's hold
        self.authorization_refused: InsufficientBalanceError | None = None
        self._hold_keeper: _HoldKeeper | None = None

    @property
    def livekit_usage(self) -> list[dict[str, Any]]:
        """LiveKit's own per-model totals as last seen (``session.usage`` or the last
        ``session_usage_updated``), as dicts; empty on releases without per-model usage."""
        usage = self._current_usage()
        if usage is None:
            return []
        try:
            return [_core.to_plain(u) for u in _core.usage_entries(usage)]
        except (TypeError, ValueError):
            return []

    def set_end_user(self, end_user_id: str) -> None:
        """Report who the conversation was with (e.g. the caller's number or your customer's user id)."""
        self._guard(self.sender.submit_session, self.session_id, {"end_user_id": end_user_id})

    def update_session(self, **fields: Any) -> None:
        """Report other session fields: ``conversation_type``, ``metadata``, ``started_at``, ``ended_at``."""
        unknown = set(fields) - set(_core.SESSION_FIELDS)
        if unknown:
            raise TypeError(f"unknown session field(s): {', '.join(sorted(unknown))}")
        self._guard(self.sender.submit_session, self.session_id, fields)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until queued usage is spooled and sent once; True when nothing is left undelivered.
        Blocking: from async code use ``await aflush()``."""
        return self.sender.flush(timeout)

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        return await asyncio.to_thread(self.sender.flush, timeout)

    def finalize(self, ended_at: float | None = None) -> None:
        """Report the end (and, in usage mode, the totals) once; called by the session's ``close`` event.
        Non-blocking."""
        if self.closed:
            return
        self.closed = True
        if self._hold_keeper is not None:
            self._guard(self._hold_keeper.stop)
        try:
            self._report_final_usage()
        except Exception:
            self._log_error("final usage")
        self._guard(
            self.sender.submit_session,
            self.session_id,
            {"ended_at": ended_at if ended_at is not None else time.time()},
        )
        self._guard(self.sender.request_flush)
        self.detach()

    async def aclose(self, timeout: float = 5.0) -> bool:
        """Finalize (if the session did not close yet) and wait up to ``timeout`` for delivery (and for the
        call's hold to be released). Registered as a job shutdown callback automatically when ``attach`` runs
        inside a LiveKit job. Never raises."""
        try:
            self.finalize()
            keeper = self._hold_keeper
            released = asyncio.to_thread(keeper.join, timeout) if keeper is not None else asyncio.sleep(0)
            delivered, _ = await asyncio.wait_for(
                asyncio.gather(self.aflush(timeout), released), timeout + 1.0
            )
            return delivered
        except Exception:
            self._log_error("shutdown flush")
            return False

    def detach(self) -> None:
        """Stop listening to the session (already done at close)."""
        session = self._session_ref()
        for event, handler in self._handlers:
            with contextlib.suppress(Exception):
                if session is not None:
                    session.off(event, handler)
        self._handlers.clear()

    # Event handlers run on the agent's event loop: they must be cheap and never raise.

    def _on_metrics_collected(self, event: Any) -> None:
        try:
            self.metrics_seen += 1
            metric = _core.unwrap_metric(event)
            kind = metric.get("type") if isinstance(metric, Mapping) else getattr(metric, "type", None)
            if kind in self.exclude_types:
                return
            data = metric.model_dump(mode="json") if hasattr(metric, "model_dump") else dict(metric)
            self.sender.submit_metric(self.session_id, data)
            self.metrics_forwarded += 1
        except Exception:
            self._log_error("metrics_collected")

    def _on_usage_updated(self, event: Any) -> None:
        try:
            self._last_usage = (
                getattr(event, "usage", None) if not isinstance(event, Mapping) else event.get("usage")
            )
        except Exception:
            self._log_error("session_usage_updated")

    def _on_close(self, event: Any = None) -> None:
        try:
            created = getattr(event, "created_at", None)
            self.finalize(created if isinstance(created, int | float) else None)
        except Exception:
            self._log_error("close")

    def _subscribe(self, session: Any, event: str, handler: Any) -> None:
        if event == "metrics_collected":
            with _quiet_metrics_deprecation():
                session.on(event, handler)
        else:
            session.on(event, handler)
        self._handlers.append((event, handler))

    def _current_usage(self) -> Any:
        session = self._session_ref()
        if session is not None:
            with contextlib.suppress(Exception):
                usage = getattr(session, "usage", None)
                if usage is not None and not callable(usage):
                    return usage
        return self._last_usage

    def _report_final_usage(self) -> None:
        if self.usage_reported:
            return
        if self.mode == "metrics" and self.metrics_seen:
            return  # reported per request; a usage report too would be refused (409)
        entries = self.livekit_usage
        if not entries:
            if self.mode == "usage":
                logger.warning(
                    "meterline: session %s closed without LiveKit usage to report", self.session_id
                )
            return
        if self.mode == "metrics":
            logger.info(
                "meterline: session %s saw no metrics_collected events; reporting LiveKit's per-model "
                "usage instead",
                self.session_id,
            )
        self.sender.submit_usage(self.session_id, entries, time.time())
        self.usage_reported = True

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._log_error(getattr(fn, "__name__", "call"))

    def _log_error(self, where: str) -> None:
        if self._errors_logged < 20:
            self._errors_logged += 1
            logger.exception(
                "meterline: error in the LiveKit integration (%s); the agent is unaffected", where
            )


def attach(
    session: Any,
    client: Client | AsyncClient,
    *,
    session_id: str | None = None,
    mode: Mode = "metrics",
    end_user_id: str | None = None,
    conversation_type: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    started_at: Any = None,
    exclude_types: frozenset[str] | set[str] | tuple[str, ...] = DEFAULT_EXCLUDED_TYPES,
    batch_size: int = 50,
    flush_interval: float = 1.0,
    register_shutdown: bool = True,
    authorize: Authorize | None = None,
) -> SessionBilling:
    """Report a LiveKit ``AgentSession``'s usage to Meterline. Call it before or after ``session.start()``.

    ``session_id`` defaults to the LiveKit job id when called inside a job. ``started_at`` defaults to now.
    ``metadata`` is merged over what is known about the job (room, job id, livekit-agents version).
    ``authorize`` holds the call's expected cost while it runs (``Authorize``; none by default).
    Returns a ``SessionBilling``; ``set_end_user()`` reports the end user when known only later, ``hold``
    and ``authorization_refused`` say how the hold stands.
    """
    if mode not in ("metrics", "usage"):
        raise ValueError('mode must be "metrics" or "usage"')
    if authorize is not None and not isinstance(authorize, Authorize):
        raise TypeError("authorize must be a meterline.livekit.Authorize (or None)")
    if isinstance(client, AsyncClient):
        client = client.sync_client()
    if not isinstance(client, Client):
        raise TypeError("client must be a meterline.Client or meterline.AsyncClient")
    if not callable(getattr(session, "on", None)):
        raise TypeError("session must be a LiveKit AgentSession (an event emitter with .on/.off)")
    job = _job_context()
    if session_id is None:
        session_id = _job_id(job)
        if not session_id:
            raise ValueError("session_id is required outside a LiveKit job")
    _core.prepare_session(session_id, {})  # refuses ids the API cannot take, now rather than on the thread
    previous = _attached.get(session) if _weakrefable(session) else None
    if previous is not None and not previous.closed:
        if previous.mode != mode or previous.session_id != session_id:
            raise ValueError(
                f"this session is already billed as {previous.session_id!r} in {previous.mode} mode"
            )
        return previous
    if mode == "usage" and not _has_model_usage(session):
        logger.warning(
            "meterline: this livekit-agents release has no per-model usage (needs ≥ 1.5); "
            "billing session %s per request instead",
            session_id,
        )
        mode = "metrics"

    billing = SessionBilling(
        session,
        client,
        session_id=session_id,
        mode=mode,
        exclude_types=frozenset(exclude_types),
        batch_size=batch_size,
        flush_interval=flush_interval,
    )
    if mode == "metrics":
        billing._subscribe(session, "metrics_collected", billing._on_metrics_collected)
    billing._subscribe(session, "session_usage_updated", billing._on_usage_updated)
    billing._subscribe(session, "close", billing._on_close)
    if _weakrefable(session):
        _attached[session] = billing

    fields: dict[str, Any] = {"started_at": started_at if started_at is not None else time.time()}
    if end_user_id is not None:
        fields["end_user_id"] = end_user_id
    if conversation_type is not None:
        fields["conversation_type"] = conversation_type
    meta = {**_job_metadata(job), **dict(metadata or {})}
    if meta:
        fields["metadata"] = meta
    if models := configured_models(session):
        fields["default_models"] = models
    billing._guard(billing.sender.submit_session, session_id, fields)

    if register_shutdown and job is not None:

        async def _meterline_flush() -> None:
            await billing.aclose()

        try:
            job.add_shutdown_callback(_meterline_flush)
        except Exception:
            billing._log_error("add_shutdown_callback")

    if authorize is not None:
        try:
            billing._hold_keeper = _HoldKeeper(billing, authorize, _running_loop())
            billing._hold_keeper.start()
        except Exception:
            billing._log_error("authorize")
    return billing


class _HoldKeeper:
    """Asks for a call's hold, extends it and releases it, from a thread of its own: each of these is an HTTP
    request (retried, possibly against a hung server) that must never run on the agent's event loop, nor hold
    up the usage the shared sender thread delivers. One per session that asked for a hold."""

    def __init__(self, billing: SessionBilling, authorize: Authorize, loop: asyncio.AbstractEventLoop | None):
        self.billing = billing
        self.authorize = authorize
        self.loop = loop
        self._stopped = threading.Event()
        self._tasks: set[asyncio.Future[Any]] = set()  # the handler's task, kept until done
        self._thread = threading.Thread(
            target=self._run, name=f"meterline-hold-{billing.session_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop extending and release the hold (on the keeper's thread; returns at once)."""
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set() and self._keep():
                self._stopped.wait(self.authorize.interval)
            # Also after a close that came while the hold was being asked for: a hold created after the
            # session's end reached the server would otherwise count until its TTL.
            self._release()
        except Exception:
            logger.exception("meterline: error keeping the hold of session %s", self.billing.session_id)

    def _keep(self) -> bool:
        """Ask for the hold, or extend it; False when it is not worth asking again."""
        billing, client, authorize = self.billing, self.billing.client, self.authorize
        try:
            if billing.hold is not None:
                try:
                    billing.hold = client.extend_authorization(
                        billing.hold["id"], ttl_seconds=authorize.ttl_seconds
                    )
                    return True
                except (ConflictError, NotFoundError):
                    # it lapsed (the server was unreachable longer than its TTL) or was released: ask anew,
                    # unless the call itself has ended meanwhile (its end releases the hold on the server)
                    billing.hold = None
                    if self._stopped.is_set():
                        return False
                    logger.info("meterline: the hold of session %s ended; asking again", billing.session_id)
            billing.hold = client.authorize(
                billing.session_id,
                amount=authorize.amount,
                expected_seconds=authorize.expected_seconds,
                ttl_seconds=authorize.ttl_seconds,
            )
            return True
        except InsufficientBalanceError as exc:
            billing.authorization_refused = exc
            self._refused(exc)
            return False
        except (ServiceUnavailableError, ServerError, RateLimitError) as exc:
            logger.warning(
                "meterline: could not hold the cost of session %s (%s); trying again in %.0f s",
                billing.session_id,
                exc,
                authorize.interval,
            )
            return True
        except MeterlineError as exc:  # a request the server will never accept (400, 401/403, 409)
            logger.error("meterline: the hold of session %s was refused: %s", billing.session_id, exc)
            return False
        except Exception:
            logger.exception("meterline: error keeping the hold of session %s", billing.session_id)
            return False

    def _release(self) -> None:
        hold = self.billing.hold
        if hold is None or hold.get("released_at"):
            return
        try:
            self.billing.hold = self.billing.client.release_authorization(hold["id"])
        except MeterlineError as exc:  # the session's end, or the TTL, releases it on the server anyway
            logger.info(
                "meterline: could not release the hold of session %s: %s", self.billing.session_id, exc
            )

    def _refused(self, error: InsufficientBalanceError) -> None:
        handler = self.authorize.on_refused
        if handler is None:
            logger.warning(
                "meterline: the balance does not cover the hold of session %s (%s %s required, %s available); "
                "the call goes on",
                self.billing.session_id,
                error.required,
                error.currency,
                error.available,
            )
            return
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._call, handler, error)
                return
            except RuntimeError:  # the loop closed in between
                pass
        self._call(handler, error)

    def _call(self, handler: Callable[[InsufficientBalanceError], Any], error: Exception) -> None:
        """Run the handler (on the agent's loop when there is one); a coroutine it returns becomes a task of
        that loop, or is run to completion here without one. Its errors are logged, never raised."""
        try:
            result = handler(error)
            if not inspect.isawaitable(result):
                return
            if _running_loop() is None:
                asyncio.run(_awaited(result))
                return
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)
        except Exception:
            logger.exception(
                "meterline: on_refused raised for session %s; the call goes on", self.billing.session_id
            )

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.error(
                "meterline: on_refused raised for session %s; the call goes on",
                self.billing.session_id,
                exc_info=(type(error), error, error.__traceback__),
            )


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def configured_models(session: Any) -> dict[str, dict[str, str]]:
    """The provider and model of the session's configured LLM (or realtime model), STT and TTS, as their
    plugins name them (``.provider``, ``.model``): the server uses them for this session's usage that names no
    model, which is what LiveKit before 1.2.12 sends. Kinds whose plugin does not say are left out."""
    found: dict[str, dict[str, str]] = {}
    for kind in _core.DEFAULT_MODEL_KINDS:
        try:
            plugin = getattr(session, kind, None)
            if plugin is None or isinstance(plugin, str):
                continue
            provider, model = getattr(plugin, "provider", None), getattr(plugin, "model", None)
        except Exception:  # a plugin property that raises must never break attach
            logger.debug(
                "meterline: the session's %s does not say its provider and model", kind, exc_info=True
            )
            continue
        names = (provider, model)
        if all(
            isinstance(n, str) and n and n != "unknown" and len(n) <= 128 and n.isprintable() for n in names
        ):
            found[kind] = {"provider": provider, "model": model}
    return found


class _DropMetricsDeprecation:
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DEPRECATION_PREFIX)


@contextlib.contextmanager
def _quiet_metrics_deprecation() -> Iterator[None]:
    """LiveKit ≥ 1.5 logs a deprecation warning when anyone subscribes to metrics_collected. We subscribe
    on purpose (it is the only per-request stream), so silence it for our own subscription only."""
    target = logging.getLogger("livekit.agents")
    log_filter = _DropMetricsDeprecation()
    target.addFilter(log_filter)
    try:
        yield
    finally:
        target.removeFilter(log_filter)


def _has_model_usage(session: Any) -> bool:
    try:
        return getattr(session, "usage", None) is not None or hasattr(type(session), "usage")
    except Exception:
        return False


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def _job_context() -> Any:
    try:
        from livekit.agents import get_job_context
    except Exception:
        return None
    try:
        return get_job_context()
    except Exception:  # RuntimeError outside a job (1.0 has no required=False)
        return None


def _job_id(job: Any) -> str | None:
    with contextlib.suppress(Exception):
        job_id = job.job.id
        if isinstance(job_id, str) and job_id:
            return job_id
    return None


def _job_metadata(job: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        from livekit.agents import __version__ as lk_version

        meta["livekit_agents_version"] = str(lk_version)
    if job is not None:
        with contextlib.suppress(Exception):
            meta["livekit_job_id"] = str(job.job.id)
        with contextlib.suppress(Exception):
            meta["livekit_room"] = str(job.job.room.name or job.room.name)
        with contextlib.suppress(Exception):
            if job.job.agent_name:
                meta["livekit_agent_name"] = str(job.job.agent_name)
    return {k: v[:500] if isinstance(v, str) else v for k, v in meta.items()}
