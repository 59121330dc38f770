"""``StripeDouble``: a stateful Stripe API served on a loopback port for the real ``stripe`` SDK to talk to.

Per request, in Stripe's order: authenticate (``Bearer sk_test_…``), route, replay or refuse a repeated
``Idempotency-Key`` (POST only, scoped to the API key, kept 24 h), validate the parameters (refusals are not
saved under the key, as on Stripe), run the operation under one lock, then save the answer under the key.
Injected faults wrap this: ``500``/``429``/``timeout`` fail the request before it runs; ``timeout_after``,
``crash_after`` and ``crash_after_500`` run it (and save it under its key) and then lose the answer.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import endpoints
from .errors import StripeError
from .params import decode_form, validate
from .resources import RequestContext, Store

IDEMPOTENCY_KEY_TTL_SECONDS = 24 * 3600
FAULT_KINDS = ("500", "429", "timeout", "timeout_after", "crash_after", "crash_after_500")
_API_KEY = re.compile(r"(sk|rk)_test_[A-Za-z0-9_]+")


@dataclass
class Fault:
    """An injected failure for requests matching ``method`` and ``path_regex`` (``re.fullmatch`` on the path)."""

    path_regex: str
    method: str
    kind: str
    remaining: int
    delay: float = 2.0
    headers: dict[str, str] = field(default_factory=dict)
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and re.fullmatch(self.path_regex, path) is not None
        )


@dataclass
class LoggedRequest:
    """One request as the double saw it; ``status`` is ``None`` when the connection was dropped."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    api_key: str | None
    headers: dict[str, str]
    status: int | None = None
    replayed: bool = False
    fault: str | None = None
    request_id: str = ""


@dataclass
class _Saved:
    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: bytes
    request_id: str
    saved_at: int


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Drop(Exception):
    """Close the connection without answering (after ``delay`` seconds)."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay


class StripeDouble:
    """A Stripe test double. ``start()`` serves it on ``127.0.0.1:<free port>``; point the SDK at ``.url``."""

    def __init__(self, *, seed: int | None = None):
        self._lock = threading.RLock()
        self._time_offset = 0
        self.store = Store(self.now, seed=seed)
        self._saved: dict[tuple[str, str], _Saved] = {}
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self.internal_errors: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()

    # Lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> StripeDouble:
        handler = type("BoundHandler", (_Handler,), {"double": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="stripe-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close kept-alive connections, so a client reusing one gets an error, not a hang."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StripeDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Stripe double is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client(self, api_key: str = "sk_test_double", **options: Any):
        """A real ``stripe.StripeClient`` aimed at this double (no retries unless ``max_network_retries`` is set)."""
        import stripe

        options.setdefault("max_network_retries", 0)
        return stripe.StripeClient(api_key, base_addresses={"api": self.url}, **options)

    # Time

    def now(self) -> int:
        return int(time.time()) + self._time_offset

    def advance_time(self, seconds: int) -> None:
        """Move the double's clock (``created`` stamps, idempotency-key expiry after 24 h, search freshness)."""
        with self._lock:
            self._time_offset += seconds

    # Faults and the request log

    def inject(
        self,
        path_regex: str,
        method: str = "POST",
        kind: str = "500",
        times: int = 1,
        *,
        delay: float = 2.0,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests fail; ``method="*"`` matches any method.

        ``500``: ``api_error`` before running (nothing stored; the SDK retries it). ``429``: ``rate_limit`` before
        running (the SDK does not retry it unless ``headers={"Stripe-Should-Retry": "true"}``; add
        ``Retry-After`` the same way). ``timeout``: holds the connection ``delay`` seconds, then closes it
        unanswered, without running. ``timeout_after``: runs and stores it, then holds and closes.
        ``crash_after``: runs and stores it, then closes unanswered. ``crash_after_500``: runs and stores it,
        then answers 500. For the last three a retry with the same ``Idempotency-Key`` gets the stored answer.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        fault = Fault(path_regex, method.upper(), kind, times, delay, dict(headers or {}))
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def requests_to(self, method: str, path_regex: str) -> list[LoggedRequest]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_regex, r.path)]

    # State, for assertions and for Stripe-side changes

    @property
    def search_delay_seconds(self) -> int:
        return self.store.search_delay_seconds

    @search_delay_seconds.setter
    def search_delay_seconds(self, seconds: int) -> None:
        """Stripe's search index lags writes (up to a minute); set this to make new objects unsearchable for
        that long (see ``advance_time``)."""
        self.store.search_delay_seconds = seconds

    @property
    def customers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.store.retrieve_customer(i) for i in self.store.customers]

    @property
    def invoices(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.store.render_invoice(r) for r in self.store.invoices.values() if not r["deleted"]]

    @property
    def invoice_items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                self.store.retrieve_invoice_item(i) for i, r in self.store.items.items() if not r["deleted"]
            ]

    @property
    def credit_notes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.store.retrieve_credit_note(i) for i in self.store.credit_notes]

    @property
    def refunds(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.store.retrieve_refund(i) for i in self.store.refunds]

    @property
    def tax_calculations(self) -> list[dict[str, Any]]:
        """Tax Calculations as stored: the answer's fields plus ``line_items`` (each with its ``amount_tax``)."""
        with self._lock:
            return [copy.deepcopy(record) for record in self.store.tax_calculations.values()]

    def set_tax_rate(self, country: str, percent: Decimal | str | int) -> None:
        """Make Stripe Tax collect ``percent`` in ``country`` (calculations and automatic tax on invoices); a
        country without a rate is not collected (tax 0)."""
        with self._lock:
            self.store.tax_rates[country.upper()] = Decimal(percent)

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Events the double emitted, oldest first (Stripe would deliver these to webhook endpoints)."""
        with self._lock:
            return [e for e in self.store.events.values() if event_type in (None, e["type"])]

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        with self._lock:
            return self.store.retrieve_invoice(invoice_id)

    def transition(self, invoice_id: str, action: str) -> dict[str, Any]:
        """Change an invoice as Stripe itself would (a customer paying the hosted page, dunning giving up):
        ``finalize``, ``pay`` (out of band), ``pay_by_card`` (the hosted page: a refundable charge), ``void`` or
        ``mark_uncollectible``, with the same rules and events."""
        ctx = RequestContext()
        operations = {
            "finalize": lambda: self.store.finalize_invoice(invoice_id, {}, ctx),
            "pay": lambda: self.store.pay_invoice(invoice_id, {"paid_out_of_band": True}, ctx),
            "pay_by_card": lambda: self.store.pay_on_hosted_page(invoice_id, ctx),
            "void": lambda: self.store.void_invoice(invoice_id, ctx),
            "mark_uncollectible": lambda: self.store.mark_uncollectible(invoice_id, ctx),
        }
        with self._lock:
            return operations[action]()

    # Request handling

    def _request_id(self) -> str:
        return self.store.new_id("req", 14)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Answer:
        """Answer one request, or raise ``_Drop`` to lose the answer."""
        split = urlsplit(target)
        path = split.path
        lower_headers = {key.lower(): value for key, value in headers.items()}
        idempotency_key = lower_headers.get("idempotency-key") if method == "POST" else None
        request_id = self._request_id()
        entry = LoggedRequest(
            method=method,
            path=path,
            params={},
            idempotency_key=idempotency_key,
            api_key=_api_key(lower_headers.get("authorization", "")),
            headers=dict(headers),
            request_id=request_id,
        )
        with self._lock:
            self._log.append(entry)
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
                fault.fired += 1
                entry.fault = fault.kind
        try:
            answer = self._answer(method, path, split.query, lower_headers, body, entry, fault)
        except StripeError as error:
            answer = _error_answer(error, request_id)
        except _Drop:
            raise
        except Exception:
            self.internal_errors.append(traceback.format_exc())
            answer = _error_answer(
                StripeError(
                    500, "The Stripe double failed; see StripeDouble.internal_errors.", type="api_error"
                ),
                request_id,
            )
        answer.headers.setdefault("Request-Id", request_id)
        if "stripe-version" in lower_headers:
            answer.headers.setdefault("Stripe-Version", lower_headers["stripe-version"])
        if idempotency_key:
            answer.headers.setdefault("Idempotency-Key", idempotency_key)
        entry.status = answer.status
        return answer

    def _answer(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        entry: LoggedRequest,
        fault: Fault | None,
    ) -> _Answer:
        kind = fault.kind if fault else None
        delay = fault.delay if fault else 0.0
        fault_headers = dict(fault.headers) if fault else {}
        try:
            params, unreadable = self._params(method, query, headers, body), None
        except StripeError as error:
            params, unreadable = {}, error
        entry.params = params
        if kind == "500":
            raise StripeError(500, "An unknown error occurred", type="api_error", headers=fault_headers)
        if kind == "429":
            raise StripeError(
                429,
                "Request rate limit exceeded. You can learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
                headers=fault_headers,
            )
        if kind == "timeout":
            raise _Drop(delay)

        if not entry.api_key:
            raise _authentication_error(headers.get("authorization", ""))
        if unreadable is not None:
            raise unreadable
        found = endpoints.route(method, path)
        if found is None:
            raise StripeError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help "
                "at https://support.stripe.com/.",
            )
        endpoint, ids = found
        # One lock from the idempotency check to the save: a concurrent request with the same key waits, then
        # gets the replay (Stripe answers it 409 instead, which the SDK retries into the same replay).
        with self._lock:
            answer = self._run(endpoint, ids, params, entry)
        if kind == "crash_after":
            raise _Drop()
        if kind == "timeout_after":
            raise _Drop(delay)
        if kind == "crash_after_500":
            raise StripeError(500, "An unknown error occurred", type="api_error", headers=fault_headers)
        return answer

    def _run(
        self, endpoint: endpoints.Endpoint, ids: dict[str, str], params: dict[str, Any], entry: LoggedRequest
    ) -> _Answer:
        key = entry.idempotency_key
        if key is not None:
            replay = self._replay(entry.api_key or "", key, entry.method, entry.path, params)
            if replay is not None:
                entry.replayed = True
                return replay
        # Refusals of the parameters are raised from here, before the key is saved: Stripe saves a result only
        # once the endpoint has started to run.
        fields = validate(params, endpoint.spec, stripe_knows=endpoint.stripe_knows)
        endpoint.check(fields)
        try:
            result = endpoint.act(self.store, ids, fields, RequestContext(entry.request_id, key))
            answer = _Answer(200, _json(endpoints.expand(self.store, result, fields.get("expand") or [])))
        except StripeError as error:
            answer = _error_answer(error, entry.request_id)
        if key is not None:
            self._saved[(entry.api_key or "", key)] = _Saved(
                entry.method, entry.path, params, answer.status, answer.body, entry.request_id, self.now()
            )
        return answer

    def _params(self, method: str, query: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        pairs = parse_qsl(query, keep_blank_values=True)
        if method == "POST" and body:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                raise StripeError(
                    400,
                    f"Invalid request: unsupported Content-Type {content_type or '(none)'}. If error persists and "
                    "you need assistance, please contact support@stripe.com.",
                )
            try:
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError) as error:
                raise StripeError(400, f"Invalid request body: {error}") from error
        return decode_form(pairs)

    def _replay(
        self, api_key: str, key: str, method: str, path: str, params: dict[str, Any]
    ) -> _Answer | None:
        if len(key) > 255:
            raise StripeError(400, "Keys for idempotent requests can be up to 255 characters long.")
        saved = self._saved.get((api_key, key))
        if saved is not None and saved.saved_at + IDEMPOTENCY_KEY_TTL_SECONDS <= self.now():
            del self._saved[(api_key, key)]
            saved = None
        if saved is None:
            return None
        if (saved.method, saved.path) != (method, path):
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{saved.method} {saved.path}' vs '{method} {path}'). Try using a key other than '{key}' if you "
                "meant to execute a different request.",
                type="idempotency_error",
            )
        if saved.params != params:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        return _Answer(
            saved.status,
            saved.body,
            {"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
        )

    def wait_while_stopping(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _error_answer(error: StripeError, request_id: str) -> _Answer:
    return _Answer(error.status, _json(error.body(request_id)), dict(error.headers))


def _api_key(authorization: str) -> str | None:
    """The test secret key from ``Bearer <key>`` (or curl's ``-u <key>:``), if it is one."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            credentials = base64.b64decode(credentials).decode().partition(":")[0]
        except ValueError:
            return None
    elif scheme.lower() != "bearer":
        return None
    return credentials if _API_KEY.fullmatch(credentials) else None


def _authentication_error(authorization: str) -> StripeError:
    credentials = authorization.partition(" ")[2].strip()
    if not credentials:
        return StripeError(
            401,
            "You did not provide an API key. You need to provide your API key in the Authorization header, using "
            "Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication "
            "for details, or we can help at https://support.stripe.com/.",
        )
    masked = credentials[:8] + "*" * max(len(credentials) - 12, 0) + credentials[-4:]
    return StripeError(
        401,
        f"Invalid API Key provided: {masked}"
        + (" (the double accepts test keys only)" if "_live_" in credentials else ""),
    )


class _Handler(BaseHTTPRequestHandler):
    double: StripeDouble
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle plus delayed ACKs add ~40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.double._lock:
            self.double._connections.add(self.connection)

    def finish(self) -> None:
        with self.double._lock:
            self.double._connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            answer = self.double.handle(self.command, self.path, dict(self.headers.items()), body)
        except _Drop as drop:
            if drop.delay:
                self.double.wait_while_stopping(drop.delay)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None
