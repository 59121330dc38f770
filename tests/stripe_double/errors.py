"""Stripe's error responses: the status code and the ``{"error": {...}}`` body the SDK maps to exceptions.

stripe-python picks the exception class from the status code (400/404 → ``InvalidRequestError``, or
``IdempotencyError`` when ``type`` is ``idempotency_error``; 401 → ``AuthenticationError``; 429 →
``RateLimitError``; 5xx → ``APIError``), so the status codes here matter as much as the bodies.
"""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An error answer; raise it anywhere in request handling and the server renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        decline_code: str | None = None,
    ):
        super().__init__(message)
        self.decline_code = decline_code
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.decline_code:
            error["decline_code"] = self.decline_code
        if self.param:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, message, param=param, code=code)


def unknown_parameter(param: str) -> StripeError:
    return invalid(f"Received unknown parameter: {param}", param=param, code="parameter_unknown")


def missing_parameter(param: str) -> StripeError:
    return invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")


def no_such(kind: str, object_id: str, *, param: str = "id", status: int = 404) -> StripeError:
    """Unknown id: 404 when it is the object in the URL, 400 when another object's parameter names it."""
    return StripeError(
        status,
        f"No such {kind}: '{object_id}'",
        param=param,
        code="resource_missing",
        type="invalid_request_error",
    )


def only_one_of(*params: str) -> StripeError:
    return invalid(f"You may only specify one of these parameters: {', '.join(params)}.", param=params[-1])


def card_declined(decline_code: str) -> StripeError:
    """402 ``card_error``: what paying an invoice with a declining card answers (the SDK raises CardError)."""
    message = {
        "insufficient_funds": "Your card has insufficient funds.",
    }.get(decline_code, "Your card was declined.")
    return StripeError(402, message, type="card_error", code="card_declined", decline_code=decline_code)
