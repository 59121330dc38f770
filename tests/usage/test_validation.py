"""The common-case validator (``plain_event``) accepts only what the full one accepts, with equal records."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from usage import validation

METERS = frozenset({"llm_input_text_tokens", "tts_audio_seconds", "stt_audio_seconds"})
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

VARIANTS = {
    "id": ["e-1", "lk:stt:abc", "", "x" * 129, "x" * 128, "sp ace", 7, None, "é", "e-1\n", ".", "..", "+1@a"],
    "timestamp": [
        "2026-11-23T11:59:00Z",
        "2026-11-23T11:59:00.123456Z",
        "2026-11-23T11:59:00.1234567Z",
        "2026-11-23T11:59:00+00:00",
        "2026-11-23t11:59:00Z",
        "2026-11-23 11:59:00Z",
        "2026-11-23T12:05:00Z",
        "2026-11-23T12:05:00.000001Z",
        "2026-10-19T12:00:00Z",
        "2026-10-19T11:59:59.999999Z",
        "2026-02-30T10:00:00Z",
        "2026-11-23T11:59:00",
        1795000000,
    ],
    "session_id": [
        "call-1",
        "",
        None,
        "s" * 128,
        "s" * 129,
        "a\x00b",
        "caf\u00e9",
        "\ud800",
        5,
        "call-1\n",
        "room/42",
        "two words",
        ".",
        "..",
        "...",
        "+15550100",
        ["call-1"],
    ],
    "provider": ["openai", "", None, "p\x00", "ü", ["x"], "openai\n", "tab\there", "a\u2028", "a b"],
    "model": ["gpt-4o-mini", "", None, "m" * 129],
    "usage": [
        {"llm_input_text_tokens": 1200},
        {"llm_input_text_tokens": 0},
        {"llm_input_text_tokens": -1},
        {"llm_input_text_tokens": 10**15},
        {"llm_input_text_tokens": 10**15 - 1},
        {"tts_audio_seconds": 3.217},
        {"tts_audio_seconds": 3.2170},
        {"tts_audio_seconds": 12.0},
        {"tts_audio_seconds": 1e-7},
        {"tts_audio_seconds": 1234567890.5},
        {"tts_audio_seconds": Decimal("3.217")},
        {"tts_audio_seconds": Decimal("3.2170")},
        {"tts_audio_seconds": Decimal("1E+3")},
        {"tts_audio_seconds": "3.217"},
        {"tts_audio_seconds": "03.2"},
        {"tts_audio_seconds": "85"},
        {"tts_audio_seconds": "0"},
        {"tts_audio_seconds": True},
        {"tts_audio_seconds": None},
        {"unknown_meter": 1},
        {},
        [],
        None,
    ],
    "metadata": [
        None,
        {},
        {"turn": 3, "region": "eu"},
        {"turn": 10**15},
        {"flag": True},
        {"ratio": 0.5},
        {"n": None},
        {"k" * 41: 1},
        {"v": "x" * 501},
        {"nested": {"a": 1}},
        {f"k{i}": i for i in range(51)},
        {"é": "ü"},
        {"call-1": 1},
        {"note": "line\nbreak"},
        {"key\n": 1},
        {"": 1},
        {"two words": 1},
        {"k" * 40: 1},
        "flat",
    ],
}


def test_plain_event_agrees_with_the_full_validator():
    rng = random.Random(7)
    fast_taken = 0
    known: set[str] = set()  # shared, as in a batch: ids already matched are not matched again
    for index in range(8000):
        # mostly the first (valid) variant of each field, so that whole events are often valid
        event = {
            name: values[0] if rng.random() < 0.75 else rng.choice(values)
            for name, values in VARIANTS.items()
            if rng.random() < 0.95
        }
        if rng.random() < 0.05:
            event["extra"] = 1
        errors: list = []
        full = validation.validate_event(event, f"/events/{index}", index, METERS, NOW, errors)
        plain = validation.plain_event(
            event, index, METERS, NOW - validation.MAX_PAST, NOW + validation.MAX_FUTURE, known
        )
        if plain is not None:
            fast_taken += 1
            assert errors == [] and plain == full, event
    assert fast_taken > 500  # the common case is exercised, not only the refusals
    assert timedelta(days=35) == validation.MAX_PAST
