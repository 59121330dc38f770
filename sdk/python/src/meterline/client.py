"""``Client`` (blocking) and ``AsyncClient`` (asyncio) for the Meterline ingestion API (DESIGN §4).

Writes are batched to the API's limits, spooled to disk before the first attempt, retried with exponential
backoff and jitter on connection errors, 408, 429 and 5xx (honouring ``Retry-After``), never retried on other
4xx, and deleted from the spool only once the server has answered 2xx. Ingestion is idempotent (event ids,
and LiveKit ids derived from the metric's natural key), so resending a spooled batch is always safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import httpx

from meterline import _core
from meterline._background import BackgroundSender
from meterline._core import (
    DELIVERED,
    KEEP,
    REJECT,
    RETRY,
    FlushResult,
    IngestResult,
    PreparedRequest,
    RetryPolicy,
)
from meterline._spool import FileSpool, MemorySpool
from meterline._version import __version__
from meterline.errors import APIError, MeterlineError, ServiceUnavailableError, error_for

logger = logging.getLogger("meterline")

UNAVAILABLE = "unavailable"
_UNSET: Any = object()


@dataclass
class Event:
    """One usage event for ``send_events``. Give ``id`` yourself to make your own retries idempotent; the
    default is a random id fixed when the event is created (the client's retries and spool reuse it).
    ``replaces``: the id of an event you sent before that this one corrects (the server retracts it)."""

    usage: Mapping[str, int | float | Decimal | str]
    id: str = field(default_factory=_core.new_event_id)
    timestamp: datetime | float | str = field(default_factory=lambda: datetime.now(timezone.utc))  # noqa: UP017
    session_id: str | None = None
    provider: str | None = None
    model: str | None = None
    metadata: Mapping[str, Any] | None = None
    replaces: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "timestamp": _core.rfc3339(self.timestamp),
            "usage": dict(self.usage),
        }
        for name in ("session_id", "provider", "model", "replaces"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.metadata is not None:
            body["metadata"] = dict(self.metadata)
        return body


@dataclass
class _Outcome:
    state: str
    request: PreparedRequest
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    index_map: list[int] | None = None
    refused: int = 0


@dataclass
class _Delivery:
    """One request being delivered: the request as it stands (items the server refused split out), where it
    is spooled, and the attempts so far. ``retry_in`` is the wait before the next attempt (None: at once)."""

    request: PreparedRequest
    spool: Any
    name: str | None
    policy: RetryPolicy
    index_map: list[int] | None = None
    refused: int = 0
    attempt: int = 0
    retry_in: float | None = None


class _BaseClient:
    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        spool_dir: str | os.PathLike[str] | bool | None = None,
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 120.0,
        headers: Mapping[str, str] | None = None,
    ):
        api_key = api_key if api_key is not None else os.environ.get("METERLINE_API_KEY", "")
        base_url = base_url if base_url is not None else os.environ.get("METERLINE_BASE_URL", "")
        if not base_url:
            raise ValueError("base_url is required (or set METERLINE_BASE_URL)")
        self.key_id = _core.parse_key(api_key)
        self.base_url = _core.normalize_base_url(base_url)
        self._api_key = api_key
        self.timeout = timeout
        self.policy = RetryPolicy(max_retries, backoff_base, backoff_max, max_retry_after)
        self._rng = random.Random()
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": f"meterline-python/{__version__}",
            **dict(headers or {}),
        }
        self._init_args = {
            "spool_dir": spool_dir,
            "timeout": timeout,
            "max_retries": max_retries,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
            "max_retry_after": max_retry_after,
            "headers": headers,
        }
        if spool_dir is False:
            self.spool: FileSpool | MemorySpool = MemorySpool()
        else:
            root = _core.default_spool_root() if spool_dir in (None, True) else os.fspath(spool_dir)  # type: ignore[arg-type]
            # One directory per key: one agent's usage is never sent with another agent's key.
            self.spool = FileSpool(os.path.join(root, self.key_id))
        # Where requests go when the spool directory cannot be written (disk full, read-only): kept in
        # memory and resent like the others, so a spool failure costs durability, not usage.
        self._overflow = MemorySpool()
        self.last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url} key={self.key_id}>"

    @property
    def spool_dir(self) -> str | None:
        return str(self.spool.root) if isinstance(self.spool, FileSpool) else None

    def pending(self) -> int:
        """Requests waiting in the spool (from this or an earlier run)."""
        return len(self.spool.pending()) + len(self._overflow.pending())

    def _spool_write(self, request: PreparedRequest) -> tuple[Any, str]:
        try:
            return self.spool, self.spool.write(request)
        except OSError as exc:
            logger.error("meterline: cannot write the spool (%s); keeping the batch in memory only", exc)
            return self._overflow, self._overflow.write(request)

    def _pending_entries(self) -> list[tuple[Any, str]]:
        return [(self.spool, n) for n in self.spool.pending()] + [
            (self._overflow, n) for n in self._overflow.pending()
        ]

    def _start_delivery(
        self, request: PreparedRequest, spool: Any, name: str | None, max_retries: int | None
    ) -> _Delivery:
        policy = self.policy if max_retries is None else replace(self.policy, max_retries=max_retries)
        return _Delivery(request, spool, name, policy)

    def _http_request(self, request: PreparedRequest) -> httpx.Request:
        return self._http.build_request(
            request.method,
            self.base_url + request.path,
            content=request.body.encode() if request.body is not None else None,
            headers={"Content-Type": "application/json"} if request.body is not None else {},
        )

    def _answer(self, delivery: _Delivery, answer: httpx.Response | httpx.TransportError) -> _Outcome | None:
        """What one attempt's answer means for the delivery: its outcome, or None to send again (after
        ``delivery.retry_in`` seconds, or at once when refused items were just split out)."""
        request, policy, attempt = delivery.request, delivery.policy, delivery.attempt
        error: BaseException
        if isinstance(answer, httpx.TransportError):
            error, delay, status = answer, policy.backoff(attempt, self._rng), None
        else:
            status = answer.status_code
            state, payload, delay = self._interpret(request, answer, attempt)
            if state == DELIVERED:
                return _Outcome(
                    DELIVERED,
                    request,
                    status,
                    _core.problem_of(payload),
                    index_map=delivery.index_map,
                    refused=delivery.refused,
                )
            if state == REJECT and (
                split := self._split(
                    delivery.spool, delivery.name, request, status, _core.problem_of(payload)
                )
            ):
                delivery.request, kept, count = split
                delivery.index_map = (
                    kept if delivery.index_map is None else [delivery.index_map[i] for i in kept]
                )
                delivery.refused += count
                delivery.retry_in = None
                return None
            if state in (REJECT, KEEP):
                outcome = self._rejection(request, status, payload, state)
                outcome.index_map, outcome.refused = delivery.index_map, delivery.refused
                return outcome
            error = error_for(status, _core.problem_of(payload), method=request.method, path=request.path)
        if attempt >= policy.max_retries or delay > policy.max_retry_after:
            return _Outcome(
                UNAVAILABLE,
                request,
                status,
                error=error,
                index_map=delivery.index_map,
                refused=delivery.refused,
            )
        logger.info(
            "meterline: %s %s failed (%s); retry %d/%d in %.2fs",
            request.method,
            request.path,
            _describe(error),
            attempt + 1,
            policy.max_retries,
            delay,
        )
        delivery.attempt += 1
        delivery.retry_in = delay
        return None

    def _stops_delivery(self, outcome: _Outcome) -> bool:
        """Remember why a batch was not delivered; True when the rest of the spool should wait too (the
        server is unreachable, or answered a status that refuses every request alike)."""
        if outcome.state not in (UNAVAILABLE, KEEP):
            return False
        self.last_error = outcome.error
        return outcome.state == UNAVAILABLE or outcome.status in _core.STOP_STATUSES

    def _delivered_body(
        self, request: PreparedRequest, key: tuple[Any, str], outcomes: dict[tuple[int, str], _Outcome]
    ) -> dict[str, Any] | None:
        """A spooled single write's answer (put_session, retract): the server's body, None when it was only
        spooled; raises when the server refused it."""
        self._collect([request], [key], outcomes)
        outcome = outcomes.get((id(key[0]), key[1]))
        return outcome.body if outcome is not None and outcome.state == DELIVERED else None

    def _interpret(
        self, request: PreparedRequest, response: httpx.Response, attempt: int
    ) -> tuple[str, Any, float]:
        """(state, parsed body, delay before the next attempt) for one response."""
        payload = _json(response)
        state = _core.classify(response.status_code, _core.problem_of(payload))
        if state != RETRY:
            return state, payload, 0.0
        retry_after = _core.retry_after_seconds(response.headers.get("Retry-After"))
        delay = retry_after if retry_after is not None else self.policy.backoff(attempt, self._rng)
        return RETRY, payload, delay

    def _split(
        self, spool: Any, name: str | None, request: PreparedRequest, status: int, problem: dict[str, Any]
    ) -> tuple[PreparedRequest, list[int], int] | None:
        if not (request.split_invalid and status in (400, 422)):
            return None
        split = _core.split_out_invalid(request, problem)
        if split is None:
            return None
        smaller, refused, kept = split
        logger.error(
            "meterline: the server refused %d item(s) of a %s batch (%s); sending the other %d. "
            "The refused items are kept in the spool's rejected/ directory.",
            len(refused),
            request.kind,
            _summary(problem),
            smaller.items,
        )
        if name is not None:
            try:
                spool.reject(name, request, status, problem, items=refused, keep_original=True)
            except OSError as exc:  # pragma: no cover
                logger.error("meterline: cannot record rejected items: %s", exc)
        return smaller, kept, len(refused)

    def _finish(self, spool: Any, name: str, outcome: _Outcome) -> None:
        if outcome.state == DELIVERED:
            spool.remove(name)
        elif outcome.state == REJECT:
            logger.error(
                "meterline: the server refused a %s batch for good (%s); moved to rejected/",
                outcome.request.kind,
                outcome.error,
            )
            try:
                spool.reject(
                    name,
                    outcome.request,
                    outcome.status,
                    outcome.error.problem if isinstance(outcome.error, APIError) else None,
                )
            except OSError as exc:  # pragma: no cover
                logger.error("meterline: cannot move a refused batch to rejected/: %s", exc)
        elif outcome.state == KEEP:
            logger.error(
                "meterline: %s; %d batch(es) stay in the spool until this is fixed",
                outcome.error,
                self.pending(),
            )
        else:
            logger.warning(
                "meterline: server unreachable (%s); %d batch(es) kept in the spool for later",
                _describe(outcome.error),
                self.pending(),
            )

    def _collect(
        self,
        requests: list[PreparedRequest],
        keys: list[tuple[Any, str]],
        outcomes: dict[tuple[int, str], _Outcome],
    ) -> IngestResult:
        result = IngestResult()
        error: APIError | None = None
        for request, (spool, name) in zip(requests, keys, strict=True):
            outcome = outcomes.get((id(spool), name))
            if outcome is None or outcome.state in (UNAVAILABLE, KEEP):
                result.spooled += request.items
                if outcome is not None and outcome.state == KEEP and error is None:
                    error = outcome.error  # type: ignore[assignment]
            elif outcome.state == DELIVERED:
                result.add(outcome.body, request.offset, outcome.index_map)
                result.rejected += outcome.refused
            elif error is None:
                error = outcome.error  # type: ignore[assignment]
        stopped = [o for o in outcomes.values() if o.state == KEEP]
        if error is None and stopped:
            error = stopped[0].error  # type: ignore[assignment]
        if error is not None:
            error.result = result
            raise error
        return result

    @staticmethod
    def _flush_result(outcomes: dict[tuple[int, str], _Outcome], pending: int) -> FlushResult:
        flushed = FlushResult(pending=pending)
        for outcome in outcomes.values():
            if outcome.state == DELIVERED:
                flushed.delivered += 1
                flushed.result.add(outcome.body)
                flushed.result.rejected += outcome.refused
            elif outcome.state == REJECT:
                flushed.rejected += 1
        return flushed

    def _rejection(self, request: PreparedRequest, status: int, payload: Any, state: str) -> _Outcome:
        problem = _core.problem_of(payload)
        return _Outcome(
            state, request, status, error=error_for(status, problem, method=request.method, path=request.path)
        )


class Client(_BaseClient):
    """Blocking client. Thread-safe; one per process (or per agent key) is enough.

    ``Client(api_key, base_url)`` — both default to ``METERLINE_API_KEY`` / ``METERLINE_BASE_URL``.
    ``spool_dir``: where undelivered batches are kept (default ``$METERLINE_SPOOL_DIR`` or
    ``~/.cache/meterline/spool``; a sub-directory per key id); ``False`` keeps them in memory only.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ):
        super().__init__(api_key, base_url, **options)
        self._http = httpx.Client(timeout=self.timeout, transport=transport, headers=self._headers)
        self._drain_lock = threading.RLock()
        self._sleep = time.sleep
        self._background: BackgroundSender | None = None
        self._background_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background sender (its queue is spooled and a last delivery attempted), close HTTP."""
        if self._background is not None:
            self._background.close(timeout)
        self._http.close()

    def send_events(self, events: Iterable[Event | Mapping[str, Any]]) -> IngestResult:
        """POST /api/v1/events, split into batches of ≤1000 events and ≤1 MiB. Returns the summed result;
        ``conflicting_events`` indexes refer to your list. Raises ValidationError (nothing of that batch
        stored), ConflictError, AuthenticationError or NotFoundError; never raises for an unreachable server
        (``result.spooled`` says how many events wait in the spool)."""
        return self._submit(_core.prepare_events(events))

    def send_livekit_metrics(self, session_id: str, metrics: Iterable[Any]) -> IngestResult:
        """POST /api/v1/livekit/metrics: LiveKit metrics objects (or their ``model_dump()``, or
        ``metrics_collected`` events), in emission order."""
        return self._submit(_core.prepare_livekit_metrics(session_id, metrics))

    def send_livekit_usage(self, session_id: str, usage: Any, *, timestamp: Any = None) -> IngestResult:
        """POST /api/v1/livekit/usage: ``AgentSession.usage`` (or its ``model_usage`` list, or a
        ``session_usage_updated`` event) at shutdown. One report per session; a session already reported
        per request raises ConflictError."""
        return self._submit([_core.prepare_livekit_usage(session_id, usage, timestamp=timestamp)])

    def put_session(
        self,
        session_id: str,
        *,
        started_at: Any = _UNSET,
        ended_at: Any = _UNSET,
        end_user_id: Any = _UNSET,
        conversation_type: Any = _UNSET,
        metadata: Any = _UNSET,
        default_models: Any = _UNSET,
    ) -> dict[str, Any] | None:
        """PUT /api/v1/sessions/{id}: upsert the fields given (others are kept). Returns the session as the
        server stores it, or None when the update was spooled because the server is unreachable.

        ``default_models`` (``{"llm": {"provider": …, "model": …}, "stt": …, "tts": …}``) names the models this
        session's usage comes from, for events that name none (LiveKit before 1.2.12), so that usage is priced."""
        request = _core.prepare_session(
            session_id,
            _given(
                started_at=started_at,
                ended_at=ended_at,
                end_user_id=end_user_id,
                conversation_type=conversation_type,
                metadata=metadata,
                default_models=default_models,
            ),
        )
        key = self._spool_write(request)
        return self._delivered_body(request, key, self._drain())

    def retract(self, event_id: str, *, reason: str | None = None) -> dict[str, Any] | None:
        """POST /api/v1/events/{id}/retract: take an event you sent out of your usage, costs and invoices (it stays
        stored and its id taken). Spooled and retried like events, and idempotent, so a retry or a resend from
        the spool answers the same. Returns the server's answer (``id``, ``retracted_at``, ``removed_usage``,
        …), or None when it was spooled because the server is unreachable. Raises NotFoundError (no such event
        of yours), AuthenticationError (another agent's), ConflictError (already corrected another way) or
        ValidationError (older than 35 days). To correct quantities instead, send an ``Event`` with
        ``replaces``."""
        request = _core.prepare_retract(event_id, reason)
        key = self._spool_write(request)
        return self._delivered_body(request, key, self._drain())

    def get_budget(self) -> dict[str, Any]:
        """GET /api/v1/budget: period-to-date spend against the tenant's budget (DESIGN §4), as the server
        returns it. Retried like writes; raises ServiceUnavailableError, NotFoundError, … (never spooled)."""
        outcome = self._deliver(_core.prepare_budget())
        return _read_result(outcome)

    def balance(self) -> dict[str, Any]:
        """GET /api/v1/balance: ``currency``, ``ledger_balance``, ``unbilled_usage``, ``held``, ``available``
        (decimal strings) and ``policy``."""
        return _read_result(self._deliver(_core.prepare_balance()))

    def authorize(
        self,
        session_id: str,
        *,
        amount: Any = None,
        expected_seconds: Any = None,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Hold the expected cost of a call before it starts (POST /api/v1/authorizations): the hold
        (``id``, ``amount``, ``expires_at``, ``available``); raises InsufficientBalanceError (402) when the
        tenant's prepaid-hard policy refuses it. Not spooled: a hold is only worth having now."""
        return _read_result(
            self._deliver(_core.prepare_authorize(session_id, amount, expected_seconds, ttl_seconds))
        )

    def extend_authorization(
        self, hold_id: int, *, ttl_seconds: int | None = None, amount: Any = None
    ) -> dict[str, Any]:
        return _read_result(self._deliver(_core.prepare_hold_action(hold_id, "extend", ttl_seconds, amount)))

    def release_authorization(self, hold_id: int) -> dict[str, Any]:
        return _read_result(self._deliver(_core.prepare_hold_action(hold_id, "release")))

    def get_session(self, session_id: str) -> dict[str, Any]:
        """GET /api/v1/sessions/{id}: a conversation's usage and its per-call cost, as the portal shows it:
        ``cost`` rounded to the currency's minor unit, ``cost_precise`` every digit (strings: parse them with
        ``decimal.Decimal``). The cost is fixed when the usage arrives. Raises NotFoundError for an unknown id."""
        outcome = self._deliver(_core.prepare_session_read(session_id))
        return _read_result(outcome)

    def flush(self) -> FlushResult:
        """Resend everything in the spool, oldest first; stops at the first batch the server cannot take yet."""
        outcomes = self._drain()
        return self._flush_result(outcomes, self.pending())

    def background(self, *, batch_size: int = 50, flush_interval: float = 1.0) -> BackgroundSender:
        """The client's background sender (created on first use; later arguments are ignored)."""
        with self._background_lock:
            if self._background is None or self._background.closed:
                self._background = BackgroundSender(
                    spool=self._spool_write,
                    drain=self._drain,
                    pending=self.pending,
                    is_durable=self.spool.durable,
                    batch_size=batch_size,
                    flush_interval=flush_interval,
                )
            return self._background

    def _submit(self, requests: list[PreparedRequest]) -> IngestResult:
        keys = [self._spool_write(r) for r in requests]
        outcomes = self._drain()
        return self._collect(requests, keys, outcomes)

    def _drain(self, max_retries: int | None = None) -> dict[tuple[int, str], _Outcome]:
        outcomes: dict[tuple[int, str], _Outcome] = {}
        with self._drain_lock:
            for spool, name in self._pending_entries():
                with spool.claim(name) as entry:
                    if entry is None:
                        continue
                    outcome = self._deliver(entry.request, spool, name, max_retries)
                    outcomes[(id(spool), name)] = outcome
                    self._finish(spool, name, outcome)
                if self._stops_delivery(outcome):
                    break
        return outcomes

    def _deliver(
        self,
        request: PreparedRequest,
        spool: Any = None,
        name: str | None = None,
        max_retries: int | None = None,
    ) -> _Outcome:
        delivery = self._start_delivery(request, spool, name, max_retries)
        while True:
            answer: httpx.Response | httpx.TransportError
            try:
                answer = self._http.send(self._http_request(delivery.request))
            except httpx.TransportError as exc:
                answer = exc
            outcome = self._answer(delivery, answer)
            if outcome is not None:
                return outcome
            if delivery.retry_in is not None:
                self._sleep(delivery.retry_in)


class AsyncClient(_BaseClient):
    """The asyncio twin of ``Client``: same arguments, same methods as coroutines. Spool file I/O (fsync)
    runs in a worker thread, so the event loop is never blocked on the disk."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ):
        super().__init__(api_key, base_url, **options)
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport, headers=self._headers)
        self._drain_lock: asyncio.Lock | None = None
        self._sleep = asyncio.sleep
        self._twin: Client | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._twin is not None:
            await asyncio.to_thread(self._twin.close)
        await self._http.aclose()

    def sync_client(self) -> Client:
        """A blocking ``Client`` with the same key, URL and spool (used by the LiveKit integration, whose
        sender runs in a thread)."""
        if self._twin is None:
            self._twin = Client(self._api_key, self.base_url, **self._init_args)
        return self._twin

    async def send_events(self, events: Iterable[Event | Mapping[str, Any]]) -> IngestResult:
        return await self._submit(_core.prepare_events(events))

    async def send_livekit_metrics(self, session_id: str, metrics: Iterable[Any]) -> IngestResult:
        return await self._submit(_core.prepare_livekit_metrics(session_id, metrics))

    async def send_livekit_usage(self, session_id: str, usage: Any, *, timestamp: Any = None) -> IngestResult:
        return await self._submit([_core.prepare_livekit_usage(session_id, usage, timestamp=timestamp)])

    async def put_session(
        self,
        session_id: str,
        *,
        started_at: Any = _UNSET,
        ended_at: Any = _UNSET,
        end_user_id: Any = _UNSET,
        conversation_type: Any = _UNSET,
        metadata: Any = _UNSET,
        default_models: Any = _UNSET,
    ) -> dict[str, Any] | None:
        request = _core.prepare_session(
            session_id,
            _given(
                started_at=started_at,
                ended_at=ended_at,
                end_user_id=end_user_id,
                conversation_type=conversation_type,
                metadata=metadata,
                default_models=default_models,
            ),
        )
        key = await asyncio.to_thread(self._spool_write, request)
        return self._delivered_body(request, key, await self._drain())

    async def retract(self, event_id: str, *, reason: str | None = None) -> dict[str, Any] | None:
        request = _core.prepare_retract(event_id, reason)
        key = await asyncio.to_thread(self._spool_write, request)
        return self._delivered_body(request, key, await self._drain())

    async def get_budget(self) -> dict[str, Any]:
        outcome = await self._deliver(_core.prepare_budget())
        return _read_result(outcome)

    async def balance(self) -> dict[str, Any]:
        return _read_result(await self._deliver(_core.prepare_balance()))

    async def authorize(
        self,
        session_id: str,
        *,
        amount: Any = None,
        expected_seconds: Any = None,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        request = _core.prepare_authorize(session_id, amount, expected_seconds, ttl_seconds)
        return _read_result(await self._deliver(request))

    async def extend_authorization(
        self, hold_id: int, *, ttl_seconds: int | None = None, amount: Any = None
    ) -> dict[str, Any]:
        return _read_result(
            await self._deliver(_core.prepare_hold_action(hold_id, "extend", ttl_seconds, amount))
        )

    async def release_authorization(self, hold_id: int) -> dict[str, Any]:
        return _read_result(await self._deliver(_core.prepare_hold_action(hold_id, "release")))

    async def get_session(self, session_id: str) -> dict[str, Any]:
        outcome = await self._deliver(_core.prepare_session_read(session_id))
        return _read_result(outcome)

    async def flush(self) -> FlushResult:
        outcomes = await self._drain()
        return self._flush_result(outcomes, self.pending())

    async def _submit(self, requests: list[PreparedRequest]) -> IngestResult:
        keys = [await asyncio.to_thread(self._spool_write, r) for r in requests]
        outcomes = await self._drain()
        return self._collect(requests, keys, outcomes)

    async def _drain(self, max_retries: int | None = None) -> dict[tuple[int, str], _Outcome]:
        if self._drain_lock is None:
            self._drain_lock = asyncio.Lock()
        outcomes: dict[tuple[int, str], _Outcome] = {}
        async with self._drain_lock:
            for spool, name in await asyncio.to_thread(self._pending_entries):
                with spool.claim(name) as entry:
                    if entry is None:
                        continue
                    outcome = await self._deliver(entry.request, spool, name, max_retries)
                    outcomes[(id(spool), name)] = outcome
                    await asyncio.to_thread(self._finish, spool, name, outcome)
                if self._stops_delivery(outcome):
                    break
        return outcomes

    async def _deliver(
        self,
        request: PreparedRequest,
        spool: Any = None,
        name: str | None = None,
        max_retries: int | None = None,
    ) -> _Outcome:
        delivery = self._start_delivery(request, spool, name, max_retries)
        while True:
            answer: httpx.Response | httpx.TransportError
            try:
                answer = await self._http.send(self._http_request(delivery.request))
            except httpx.TransportError as exc:
                answer = exc
            outcome = self._answer(delivery, answer)
            if outcome is not None:
                return outcome
            if delivery.retry_in is not None:
                await self._sleep(delivery.retry_in)


def _given(**fields: Any) -> dict[str, Any]:
    """The session fields a put_session call names (the others keep what the server has)."""
    return {name: value for name, value in fields.items() if value is not _UNSET}


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _read_result(outcome: _Outcome) -> dict[str, Any]:
    if outcome.state == DELIVERED:
        return outcome.body
    if isinstance(outcome.error, MeterlineError):
        raise outcome.error
    raise ServiceUnavailableError(f"Meterline is unreachable: {_describe(outcome.error)}") from outcome.error


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _summary(problem: Mapping[str, Any]) -> str:
    errors = problem.get("errors") or []
    shown = "; ".join(f"{e.get('pointer')}: {e.get('detail')}" for e in errors[:3] if isinstance(e, Mapping))
    return shown or str(problem.get("detail") or "no detail")
