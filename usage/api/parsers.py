"""A strict JSON parser for the API: bounded body, no NaN/Infinity, no duplicate keys, exact decimals."""

from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings
from rest_framework import exceptions, parsers, status


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is larger than 1 MiB."
    default_code = "payload_too_large"


class DuplicateKey(ValueError):
    pass


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON numbers")


def _no_duplicate_keys(pairs):
    obj = dict(pairs)  # in C; fewer keys than pairs means a key repeated
    if len(obj) != len(pairs):
        # Parsers disagree about which of two equal keys wins; refusing is the only unambiguous answer.
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise DuplicateKey(f"duplicate key {repeated!r}")
    return obj


def loads_strict(raw: bytes):
    """Parse JSON with numbers as exact Decimals; raise ValueError for anything a strict reader refuses."""
    return json.loads(
        raw,
        parse_float=Decimal,
        parse_constant=_reject_constant,
        object_pairs_hook=_no_duplicate_keys,
    )


class StrictJSONParser(parsers.BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.INGEST_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        if request is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                raise PayloadTooLarge()
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge()
        try:
            return loads_strict(raw)
        except RecursionError:
            raise exceptions.ParseError("JSON is nested too deeply.") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"Malformed JSON: {exc}") from None
