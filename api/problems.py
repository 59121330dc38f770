"""RFC 9457 problem details for every API error: ``type``, ``title``, ``status``, ``detail``, ``errors``."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://meterline.dev/problems/"


class FieldErrorSerializer(serializers.Serializer):
    pointer = serializers.CharField(
        help_text='JSON pointer (RFC 6901) to the offending field, e.g. "/events/3/usage/tts_characters"; '
        '"" for the body as a whole.'
    )
    detail = serializers.CharField(help_text="What is wrong with it.")


class ProblemSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="A URI naming the kind of problem.")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField(help_text="What happened and what to do.")
    errors = FieldErrorSerializer(
        many=True, help_text="One entry per offending field (empty when none applies)."
    )


# What each error status means, for the OpenAPI schema; an operation may say more for its own case.
ERROR_MEANINGS = {
    400: "The body is not JSON or not a JSON object, or a field or query parameter is invalid. "
    "`errors` names each offending field. Nothing was changed.",
    402: "The tenant's prepaid balance does not cover it under its policy; the body says what is available and "
    "what is required. Nothing was changed.",
    401: "The API key is missing, malformed, unknown, revoked or expired, or its agent or tenant is disabled. "
    "Send `Authorization: Bearer mlk_live_…`.",
    403: "The key may not do this to the resource named (it belongs to another agent of your tenant). Nothing "
    "was changed.",
    404: "Not found in your tenant.",
    409: "The request conflicts with what is stored. Nothing was stored.",
    413: "The body is larger than 1 MiB. Send smaller batches.",
    415: "The body must be sent as `Content-Type: application/json`.",
    422: "The batch is invalid: nothing was stored. `errors` holds a JSON pointer and a reason for every "
    "offending field; fix them and resend the whole batch.",
    429: "Too many requests for this key. Wait for the number of seconds in the `Retry-After` header.",
}


def error_responses(*codes: int, **meanings: str) -> dict:
    """The ``responses`` entries of ``extend_schema`` for these error statuses: problem+json bodies with
    ``ERROR_MEANINGS``' text, or an operation's own (``meanings``, keyed ``e409=…``)."""
    return {
        (code, PROBLEM_CONTENT_TYPE): OpenApiResponse(
            ProblemSerializer, description=meanings.get(f"e{code}", ERROR_MEANINGS[code])
        )
        for code in codes
    }


@csrf_exempt  # an API path no route names answers 404 to a POST too, not the portal's CSRF page
def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A 404 in the API's own form for paths under /api/ that no route (or no valid path) names."""
    body = {
        "type": PROBLEM_TYPE_BASE + "not_found",
        "title": "Not found",
        "status": 404,
        "detail": "No resource has this path.",
        "errors": [],
    }
    return HttpResponse(json.dumps(body), status=404, content_type=PROBLEM_CONTENT_TYPE)


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
