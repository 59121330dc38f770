"""The API's JSON reader: the fast path (orjson) must answer exactly as the strict one, or defer to it."""

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.parsers import loads_fast, loads_strict


def _normal(value):
    """Parsed JSON with every number as an exact Decimal: the strict reader's Decimals and the fast reader's
    floats (whose repr is the literal's digits) compare equal when they are the same number."""
    if isinstance(value, float):
        return ("number", Decimal(repr(value)).normalize())
    if isinstance(value, Decimal):
        return ("number", value.normalize())
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _outcome(read, raw: bytes):
    try:
        return "ok", _normal(read(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return "refused", type(exc).__name__


TRICKY = [
    '{"a":1,"a":2}',
    '{"a" :1,"b":2,"a":3}',
    '{"k":{"k":1,"k":2}}',
    '{"a\\"":1,"a\\"":2}',
    '{"a":"x\\":y","a":1}',
    '{"\\u0061":1,"a":2}',
    '{"a":"\\u003a","b":1}',
    "[1.5, 2.50, 1e3, 1E-7, -0.0, 0.1234567890123456, 123456789012345.6]",
    "[0.1000000000000000055511151231257827]",
    "[ 0.12345678901234567, -12345678901234567.5]",
    '{"a":\n  -0.000000000000000001}',
    '{"id": "17323872001234567890", "q": 1.5, "r": 0.1000000000000000055511151231257827}',
    '{"x": 12345678901234567890}',
    '{"x": 123456789012345678901234567890}',
    "NaN",
    "[Infinity]",
    "[-Infinity]",
    "1e309",
    '"\\ud800"',
    '\ufeff{"a":1}',
    '{"a":1,}',
    "[1,2",
    '"\x01"',
    '{ "a" : 1 , "b" : [true, false, null] }',
    '{"é": "ü\\n\\t", "t": "2026-11-23T10:00:00.123456Z"}',
    "[" * 5000 + "]" * 5000,
]


@pytest.mark.parametrize("text", TRICKY)
def test_fast_reader_answers_as_the_strict_one_on_tricky_input(text):
    for raw in (text.encode(), text.encode("utf-16")):
        assert _outcome(loads_fast, raw) == _outcome(loads_strict, raw)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: abs(d) < 10**20),
    st.text(alphabet=st.sampled_from('ab:"\\é \n'), max_size=6),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(st.tuples(st.sampled_from(["a", "b", "a:b", 'q"', "é"]), inner), max_size=4),
    ),
    max_leaves=12,
)


def _write(value, separator: str) -> str:
    """JSON text of a generated document; lists of pairs become objects, keeping repeated keys."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ",".join(f"{json.dumps(k)}{separator}{_write(v, separator)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_write(v, separator) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


@settings(max_examples=400, deadline=None)
@given(documents, st.sampled_from([":", ": ", " :", ":\n"]))
def test_fast_reader_answers_as_the_strict_one_on_generated_documents(document, separator):
    raw = _write(document, separator).encode()
    assert _outcome(loads_fast, raw) == _outcome(loads_strict, raw)
