"""RFC 9457 problem details for every API error: ``type``, ``title``, ``status``, ``detail``, ``errors``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://meterline.dev/problems/"

# How the OpenAPI schema documents an error response.
PROBLEM = OpenApiResponse(description="application/problem+json with errors [{pointer, detail}]")


def problem_response(
    status_code: int,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    code: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (code or title.lower().replace(" ", "-")),
        "title": title,
        "status": status_code,
        "detail": detail,
        "errors": errors or [],
        **extra,
    }
    return Response(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _flatten(data: Any, pointer: str = "") -> list[dict[str, str]]:
    if isinstance(data, dict):
        return [e for key, value in data.items() for e in _flatten(value, f"{pointer}/{key}")]
    if isinstance(data, list) and data and all(isinstance(x, str | exceptions.ErrorDetail) for x in data):
        return [{"pointer": pointer, "detail": str(x)} for x in data]
    if isinstance(data, list):
        return [e for i, value in enumerate(data) for e in _flatten(value, f"{pointer}/{i}")]
    return [{"pointer": pointer, "detail": str(data)}]


_TITLES = {
    status.HTTP_400_BAD_REQUEST: "Bad request",
    status.HTTP_401_UNAUTHORIZED: "Unauthorized",
    status.HTTP_403_FORBIDDEN: "Forbidden",
    status.HTTP_404_NOT_FOUND: "Not found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "Method not allowed",
    status.HTTP_406_NOT_ACCEPTABLE: "Not acceptable",
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: "Payload too large",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
    status.HTTP_429_TOO_MANY_REQUESTS: "Too many requests",
}


def problem_exception_handler(exc, context):
    """DRF's handler, re-rendered as problem+json; validation errors become pointer/detail pairs."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        detail = "The request has invalid fields."
    else:
        detail = str(exc.detail) if isinstance(exc, exceptions.APIException) else "Error."
        errors = []
    title = _TITLES.get(response.status_code, "Error")
    headers = {k: v for k, v in response.headers.items() if k in ("WWW-Authenticate", "Retry-After", "Allow")}
    code = getattr(exc, "default_code", "") if isinstance(exc, exceptions.APIException) else ""
    return problem_response(response.status_code, title, detail, errors, code=code, headers=headers)
