"""Request parameters as Stripe reads them: bracket-syntax form fields, typed, and refused when unknown.

The SDK form-encodes ``{"metadata": {"k": "v"}, "expand": ["customer"]}`` as ``metadata[k]=v&expand[0]=customer``
(``curl`` users write ``expand[]=customer``; both mean the same to Stripe). ``decode_form`` rebuilds the nested
structure; ``validate`` checks it against an endpoint's spec, coercing strings to ints, booleans and decimals
the way Stripe does and answering with Stripe's error for anything it would refuse.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from .errors import invalid, unknown_parameter

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``[("metadata[k]", "v"), ("expand[]", "a")]`` → ``{"metadata": {"k": "v"}, "expand": ["a"]}``.

    Indexed arrays (``expand[0]``) stay dicts keyed by ``"0"``; ``array_of`` accepts both forms, because only
    the endpoint knows whether a parameter is an array or a hash (metadata keys may be digits).
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.fullmatch(key)
        parts = [match.group(1), *_SUBKEY.findall(match.group(2))] if match else [key]
        if len(parts) > 1 and parts[-1] == "":
            container = _descend(root, parts[:-2])
            existing = container.setdefault(parts[-2], [])
            if not isinstance(existing, list):
                raise invalid(f"Invalid array: {_name(parts[:-1])}", param=_name(parts[:-1]))
            existing.append(value)
            continue
        node = _descend(root, parts[:-1])
        if isinstance(node.get(parts[-1]), dict | list):
            raise invalid(f"Invalid hash: {_name(parts)}", param=_name(parts))
        node[parts[-1]] = value
    return root


def _descend(root: dict[str, Any], path: list[str]) -> dict[str, Any]:
    node = root
    for depth, part in enumerate(path):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise invalid(f"Invalid hash: {_name(path[: depth + 1])}", param=_name(path[: depth + 1]))
        node = child
    return node


def _name(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


Coerce = Callable[[Any, str], Any]


class Field(NamedTuple):
    """One parameter: how to read it, and whether ``""`` unsets it (Stripe's convention for nullable fields)."""

    coerce: Coerce
    nullable: bool = False


def validate(
    params: dict[str, Any],
    spec: dict[str, Field],
    *,
    prefix: str = "",
    stripe_knows: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Coerce ``params`` by ``spec``; a name outside it is refused as Stripe refuses it (``parameter_unknown``).

    ``stripe_knows`` lists parameters the real API accepts but this double does not model: they are refused
    too, with a message saying so, rather than silently ignored (a test would otherwise pass for the wrong
    reason).
    """
    result: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        field = spec.get(key)
        if field is None:
            if key in stripe_knows:
                raise invalid(
                    f"The Stripe test double does not model the parameter '{name}' (the real API accepts it). "
                    "Extend tests/stripe_double if the code under test needs it.",
                    param=name,
                    code="parameter_not_modelled",
                )
            raise unknown_parameter(name)
        if value == "":
            if not field.nullable:
                raise invalid(
                    f"You passed an empty string for '{name}'. We assume empty values are an attempt to unset a "
                    f"parameter; however '{name}' cannot be unset. You should remove '{name}' from your request "
                    "or supply a non-empty value.",
                    param=name,
                )
            result[key] = None
            continue
        result[key] = field.coerce(value, name)
    return result


def text(value: Any, name: str, *, max_length: int = 5000) -> str:
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {_shown(value)}", param=name)
    if len(value) > max_length:
        raise invalid(f"Invalid {name}: must be at most {max_length} characters", param=name)
    return value


def integer(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    raise invalid(f"Invalid integer: {_shown(value)}", param=name)


def non_negative_integer(value: Any, name: str) -> int:
    number = integer(value, name)
    if number < 0:
        raise invalid(f"Invalid {name}: must be greater than or equal to 0", param=name)
    return number


def boolean(value: Any, name: str) -> bool:
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    raise invalid(f"Invalid boolean: {_shown(value)}", param=name)


def decimal_string(value: Any, name: str) -> Decimal:
    """Stripe's ``*_decimal`` parameters: a decimal string with at most 12 decimal places."""
    try:
        number = Decimal(value) if isinstance(value, str | int) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise invalid(f"Invalid decimal: {_shown(value)}", param=name)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        raise invalid(f"Invalid {name}: must have at most 12 decimal places", param=name)
    return number


def currency(value: Any, name: str) -> str:
    code = text(value, name).lower()
    if not re.fullmatch(r"[a-z]{3}", code):
        raise invalid(f"Invalid currency: {value}", param=name)
    return code


def enum(*choices: str) -> Coerce:
    def coerce(value: Any, name: str) -> str:
        if value not in choices:
            listed = ", ".join(choices[:-1]) + (" or " if len(choices) > 1 else "") + choices[-1]
            raise invalid(f"Invalid {name}: must be one of {listed}", param=name)
        return value

    return coerce


def hash_of(spec: dict[str, Field]) -> Coerce:
    def coerce(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise invalid(f"Invalid object: {name} must be a hash", param=name)
        return validate(value, spec, prefix=name)

    return coerce


def array_of(item: Coerce) -> Coerce:
    def coerce(value: Any, name: str) -> list[Any]:
        if isinstance(value, dict) and all(key.isdigit() for key in value):
            value = [value[key] for key in sorted(value, key=int)]
        if not isinstance(value, list):
            raise invalid(f"Invalid array: {name} must be an array", param=name)
        return [item(element, f"{name}[{index}]") for index, element in enumerate(value)]

    return coerce


def metadata(value: Any, name: str) -> dict[str, str | None]:
    """Stripe's limits: 50 keys, keys ≤ 40 characters, values ≤ 500; ``metadata[k]=""`` unsets ``k``."""
    if not isinstance(value, dict):
        raise invalid("Invalid metadata: metadata must be a hash of string keys to string values", param=name)
    if len(value) > 50:
        raise invalid("Invalid metadata: metadata can have up to 50 keys", param=name)
    result: dict[str, str | None] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid(f"Invalid value for metadata key '{key}': must be a string", param=f"{name}[{key}]")
        if len(key) > 40:
            raise invalid(
                f"Invalid metadata key '{key}': must be at most 40 characters", param=f"{name}[{key}]"
            )
        if len(item) > 500:
            raise invalid(
                f"Invalid value for metadata key '{key}': must be at most 500 characters",
                param=f"{name}[{key}]",
            )
        result[key] = item or None
    return result


def created_filter(value: Any, name: str) -> dict[str, int]:
    """``created=123`` or ``created[gte]=…&created[lt]=…`` on list endpoints."""
    if isinstance(value, dict):
        return validate(value, {op: Field(integer) for op in ("gt", "gte", "lt", "lte")}, prefix=name)
    return {"eq": integer(value, name)}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def merge_metadata(current: dict[str, str], update: dict[str, str | None] | None) -> dict[str, str]:
    """Apply a metadata parameter: ``None`` (``metadata=""``) clears all, a ``None`` value clears one key."""
    if update is None:
        return {}
    merged = dict(current)
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def stripe_param_names(typed_dict_name: str) -> frozenset[str]:
    """The parameters the real API accepts for an endpoint, read from the SDK's generated ``*Params`` types.

    Used only to word the refusal of a parameter the double does not model; empty if the SDK moved them.
    """
    module_name, _, type_name = typed_dict_name.rpartition(
        "."
    )  # "tax.CalculationCreateParams": stripe.params.tax
    try:
        from stripe._request_options import RequestOptions

        module = importlib.import_module(".".join(["stripe.params", *filter(None, [module_name])]))
        params_type = getattr(module, type_name)
    except (ImportError, AttributeError):
        return frozenset()
    names: set[str] = set()
    for klass in params_type.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
    return frozenset(names - set(RequestOptions.__annotations__))
