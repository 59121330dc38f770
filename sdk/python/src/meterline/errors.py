"""Exceptions raised by the Meterline client.

Only requests whose data can never be accepted raise for usage writes (a bad batch, a session reported both
ways, a wrong key or URL). A server that is unreachable, overloaded or failing does not: the batch stays in
the durable spool and is resent later, and the result says how many items are still waiting.
"""

from __future__ import annotations

from typing import Any


class MeterlineError(Exception):
    """Base class of every error this package raises."""


class APIError(MeterlineError):
    """The server answered with an error status. ``errors`` holds the problem's ``{pointer, detail}`` list."""

    def __init__(
        self, status: int, problem: dict[str, Any] | None = None, *, method: str = "", path: str = ""
    ):
        self.status = status
        self.problem: dict[str, Any] = problem or {}
        self.title: str = str(self.problem.get("title") or "")
        self.detail: str = str(self.problem.get("detail") or "")
        errors = self.problem.get("errors")
        self.errors: list[dict[str, Any]] = errors if isinstance(errors, list) else []
        self.method = method
        self.path = path
        self.result: Any = None  # what earlier batches of the same call achieved, when a call spans batches
        text = f"{status} {self.title or 'error'}"
        if self.detail:
            text += f": {self.detail}"
        if self.errors:
            shown = "; ".join(f"{e.get('pointer', '')}: {e.get('detail', '')}" for e in self.errors[:5])
            more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
            text += f" [{shown}{more}]"
        if method:
            text += f" ({method} {path})"
        super().__init__(text)


class ValidationError(APIError):
    """400/413/422: the payload was refused and nothing was stored. Resending it unchanged never helps."""


class AuthenticationError(APIError):
    """401/403: the API key is missing, malformed, revoked, expired, or not allowed to do this."""


class InsufficientBalanceError(APIError):
    """402: a pre-call hold the tenant's prepaid balance does not cover under its policy (prepaid-hard).
    ``available`` and ``required`` are the server's amounts (``decimal.Decimal``), in ``currency``."""

    def __init__(self, status: int, problem: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(status, problem, **kwargs)
        from decimal import Decimal, InvalidOperation

        def amount(name: str) -> Decimal | None:
            try:
                return Decimal(str(self.problem[name]))
            except (KeyError, InvalidOperation):
                return None

        self.available, self.required = amount("available"), amount("required")
        self.currency: str = str(self.problem.get("currency") or "")


class NotFoundError(APIError):
    """404: unknown route or object (also: another tenant's object, and endpoints this server lacks)."""


class ConflictError(APIError):
    """409: e.g. a LiveKit session already reported the other way (per-request metrics vs per-model usage), or
    an event already corrected (retracted or replaced) that a new correction names."""


class RateLimitError(APIError):
    """429 on a read after all retries (writes are spooled instead)."""


class ServerError(APIError):
    """5xx on a read after all retries (writes are spooled instead)."""


class ServiceUnavailableError(MeterlineError):
    """A read could not reach the server (connection refused, timeout, …) after all retries."""


def error_for(status: int, problem: dict[str, Any] | None, *, method: str = "", path: str = "") -> APIError:
    if status in (400, 413, 422):
        cls: type[APIError] = ValidationError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 402:
        cls = InsufficientBalanceError
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(status, problem, method=method, path=path)
