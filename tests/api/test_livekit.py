"""LiveKit ingestion with the sessions captured from the real livekit-agents package (DESIGN §3, §4).

Each captured session is posted twice — its per-request metrics through /livekit/metrics and LiveKit's own
per-model totals (``session_usage_updated_final``) through /livekit/usage — and the rolled-up totals of the
two must agree with each other and with the file's raw counts.
"""

import hashlib
import json
import re
from decimal import Decimal

import pytest

from tests import livekit_samples as samples
from tests.usage.builders import totals
from usage.models import Session, UsageEvent

pytestmark = pytest.mark.django_db
METRICS_URL = "/api/v1/livekit/metrics"
USAGE_URL = "/api/v1/livekit/usage"


def expected_from_livekit_usage(entries: list[dict]) -> dict[tuple[str, str, str], Decimal]:
    """DESIGN §3's formulas applied by hand to LiveKit's per-model usage (independent of usage.meters)."""
    expected: dict[tuple[str, str, str], Decimal] = {}

    def put(meter, entry, value):
        if value:
            expected[(meter, entry["provider"], entry["model"])] = Decimal(str(value)).normalize()

    for u in entries:
        if u["type"] == "llm_usage":
            has_modality = u["input_text_tokens"] or u["input_audio_tokens"] or u["input_image_tokens"]
            if has_modality:
                put("llm_input_text_tokens", u, u["input_text_tokens"] - u["input_cached_text_tokens"])
                put("llm_input_cached_text_tokens", u, u["input_cached_text_tokens"])
            else:
                put(
                    "llm_input_text_tokens",
                    u,
                    u["input_tokens"] - u["input_cached_tokens"] - u["input_cache_creation_tokens"],
                )
                put("llm_input_cached_text_tokens", u, u["input_cached_tokens"])
            put("llm_input_cache_write_tokens", u, u["input_cache_creation_tokens"])
            put("llm_input_audio_tokens", u, u["input_audio_tokens"] - u["input_cached_audio_tokens"])
            put("llm_input_cached_audio_tokens", u, u["input_cached_audio_tokens"])
            put("llm_input_image_tokens", u, u["input_image_tokens"])
            has_out_modality = u["output_text_tokens"] or u["output_audio_tokens"]
            put(
                "llm_output_text_tokens",
                u,
                u["output_text_tokens"] if has_out_modality else u["output_tokens"],
            )
            put("llm_output_audio_tokens", u, u["output_audio_tokens"])
            put("realtime_session_seconds", u, u["session_duration"])
        elif u["type"] == "stt_usage":
            put("stt_audio_seconds", u, u["audio_duration"])
            put("stt_input_tokens", u, u["input_tokens"])
            put("stt_output_tokens", u, u["output_tokens"])
        elif u["type"] == "tts_usage":
            put("tts_characters", u, u["characters_count"])
            put("tts_audio_seconds", u, u["audio_duration"])
            put("tts_input_tokens", u, u["input_tokens"])
            put("tts_output_tokens", u, u["output_tokens"])
    return expected


@pytest.mark.parametrize("name", samples.SESSIONS)
def test_metrics_and_usage_reports_both_equal_livekits_own_totals(agent_client, tenant, name):
    sample = samples.load(name)
    expected = expected_from_livekit_usage(samples.final_model_usage(sample))

    response = agent_client.post(
        METRICS_URL, {"session_id": "via-metrics", "metrics": samples.shifted_metrics(sample)}
    )
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] + response.json().get("ignored", 0) == len(sample["metrics"])
    response = agent_client.post(
        USAGE_URL, {"session_id": "via-usage", "usage": samples.final_model_usage(sample)}
    )
    assert response.status_code == 200, response.content

    assert totals(tenant, session_id="via-metrics") == expected
    assert totals(tenant, session_id="via-usage") == expected


def test_pipeline_session_totals_match_the_hand_computed_meters(agent_client, tenant):
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    agent_client.post(METRICS_URL, {"session_id": "s", "metrics": samples.shifted_metrics(sample)})

    assert totals(tenant) == {
        ("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini"): Decimal(18121 - 15744),
        ("llm_input_cached_text_tokens", "api.openai.com", "gpt-4o-mini"): Decimal(15744),
        ("llm_output_text_tokens", "api.openai.com", "gpt-4o-mini"): Decimal(284),
        ("stt_audio_seconds", "Deepgram", "nova-3"): Decimal("118.78"),
        ("tts_characters", "Cartesia", "sonic-3"): Decimal(943),
        ("tts_audio_seconds", "Cartesia", "sonic-3"): Decimal("62.6"),
    }


def test_realtime_session_splits_audio_text_and_cache_without_double_counting(agent_client, tenant):
    sample = samples.load("realtime_openai_gpt_realtime")
    agent_client.post(METRICS_URL, {"session_id": "s", "metrics": samples.shifted_metrics(sample)})
    got = totals(tenant)
    llm = {m: q for (m, p, model), q in got.items() if model == "gpt-realtime"}

    # gpt-realtime: 13944 input = 9155 text (7872 cached) + 4789 audio (3520 cached); 1121 output = 194 + 927
    assert llm == {
        "llm_input_text_tokens": 9155 - 7872,
        "llm_input_cached_text_tokens": 7872,
        "llm_input_audio_tokens": 4789 - 3520,
        "llm_input_cached_audio_tokens": 3520,
        "llm_output_text_tokens": 194,
        "llm_output_audio_tokens": 927,
    }
    assert sum(q for m, q in llm.items() if m.startswith("llm_input")) == 13944
    assert got[("stt_input_tokens", "api.openai.com", "gpt-4o-transcribe")] == 194
    assert got[("stt_output_tokens", "api.openai.com", "gpt-4o-transcribe")] == 51


def test_legacy_1_2_payloads_give_the_same_totals_as_1_8(agent_client, tenant):
    modern = samples.load("pipeline_deepgram_openai_cartesia")
    legacy = samples.load("pipeline_deepgram_openai_cartesia_v1.2.18")
    agent_client.post(METRICS_URL, {"session_id": "new", "metrics": samples.shifted_metrics(modern)})
    response = agent_client.post(
        METRICS_URL, {"session_id": "old", "metrics": samples.shifted_metrics(legacy)}
    )

    assert response.status_code == 200, response.content
    assert totals(tenant, session_id="old") == totals(tenant, session_id="new")
    summary = legacy["usage_summary"]
    old = totals(tenant, session_id="old")
    assert old[("tts_characters", "Cartesia", "sonic-3")] == summary["tts_characters_count"]
    assert old[("stt_audio_seconds", "Deepgram", "nova-3")] == Decimal(str(summary["stt_audio_duration"]))


def test_resent_metrics_and_handoff_duplicates_are_counted_once(agent_client, tenant):
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    metrics = samples.shifted_metrics(sample)
    first = agent_client.post(METRICS_URL, {"session_id": "s", "metrics": metrics}).json()
    before = totals(tenant)

    # a resend of everything, plus LiveKit's duplicate emission after an agent handoff inside one batch
    again = agent_client.post(METRICS_URL, {"session_id": "s", "metrics": metrics + metrics[:20]}).json()

    assert again["accepted"] == 0
    assert again["duplicates"] == first["accepted"] + sum(
        1
        for m in metrics[:20]
        if m["type"] in {"llm_metrics", "stt_metrics", "tts_metrics"}
        and (
            m.get("audio_duration")
            or m.get("prompt_tokens")
            or m.get("characters_count")
            or m.get("completion_tokens")
        )
    )
    assert totals(tenant) == before


def test_metrics_collected_envelopes_are_accepted(agent_client, tenant):
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    envelope = dict(sample["metrics_collected_event_example"])
    envelope["metrics"] = samples.shifted_metrics(
        {"metrics": [envelope["metrics"]], "session": sample["session"]}
    )[0]

    response = agent_client.post(METRICS_URL, {"session_id": "s", "metrics": [envelope]})

    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert totals(tenant)[("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini")] == 1106


def test_a_session_reported_both_ways_is_refused_with_409(agent_client, tenant):
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    agent_client.post(METRICS_URL, {"session_id": "s", "metrics": samples.shifted_metrics(sample)})
    before = UsageEvent.objects.count()

    response = agent_client.post(USAGE_URL, {"session_id": "s", "usage": samples.final_model_usage(sample)})

    assert response.status_code == 409
    assert response.json()["errors"][0]["pointer"] == "/session_id"
    assert UsageEvent.objects.count() == before

    agent_client.post(USAGE_URL, {"session_id": "u", "usage": samples.final_model_usage(sample)})
    response = agent_client.post(METRICS_URL, {"session_id": "u", "metrics": samples.shifted_metrics(sample)})
    assert response.status_code == 409
    assert Session.objects.get(session_id="u").livekit_report_mode == "usage"


def test_a_usage_report_resent_is_a_duplicate_and_a_changed_one_a_conflict(agent_client, tenant):
    usage = samples.final_model_usage(samples.load("pipeline_deepgram_openai_cartesia"))
    agent_client.post(USAGE_URL, {"session_id": "s", "usage": usage})
    before = totals(tenant)

    resent = agent_client.post(USAGE_URL, {"session_id": "s", "usage": usage}).json()
    changed = [dict(u, characters_count=9999) if u["type"] == "tts_usage" else u for u in usage]
    conflicted = agent_client.post(USAGE_URL, {"session_id": "s", "usage": changed}).json()

    assert (resent["accepted"], resent["duplicates"]) == (0, 3)
    assert (conflicted["duplicates"], conflicted["conflicts"]) == (2, 1)
    assert totals(tenant) == before


def test_invalid_metrics_are_refused_with_pointers_and_nothing_is_stored(agent_client):
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    metrics = samples.shifted_metrics(sample)[:10]
    llm = next(i for i, m in enumerate(metrics) if m["type"] == "llm_metrics")
    metrics[llm] = dict(metrics[llm], prompt_tokens=-3)
    tts = next(i for i, m in enumerate(metrics) if m["type"] == "tts_metrics")
    metrics[tts] = dict(metrics[tts], timestamp=metrics[tts]["timestamp"] - 40 * 86400)

    response = agent_client.post(METRICS_URL, {"session_id": "s", "metrics": metrics})

    assert response.status_code == 422
    assert {e["pointer"] for e in response.json()["errors"]} == {
        f"/metrics/{tts}/timestamp",
        f"/metrics/{llm}/prompt_tokens",
    }
    assert not UsageEvent.objects.exists() and not Session.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"metrics": []},
        {"session_id": "", "metrics": [{"type": "llm_metrics"}]},
        {"session_id": "s", "metrics": [{"no": "type"}]},
        {"session_id": "s", "metrics": "x"},
        {"session_id": "s", "metrics": [{"type": "tts_metrics", "characters_count": "12", "timestamp": 1}]},
        {"session_id": "s", "metrics": [{"type": "stt_metrics", "audio_duration": 1.5, "timestamp": "now"}]},
    ],
)
def test_malformed_metrics_bodies_get_422(agent_client, body):
    response = agent_client.post(METRICS_URL, body)
    assert response.status_code == 422, response.content
    assert not UsageEvent.objects.exists()


# The samples are copies of shared/data/livekit/, captured from the real livekit-agents package (see
# tests/data/livekit/README.md), checked equal to those originals when pinned. To refresh one, copy the new
# capture in and pin its `sha256sum`; never edit a capture by hand.
SAMPLE_SHA256 = {
    "pipeline_deepgram_openai_cartesia": "95cf75982f11a406a06a0aa71d9d226a40b7d4a8a8ec09c2a8f14e3f536c9b06",
    "realtime_openai_gpt_realtime": "c97c107ba5fb842d57723b37576ed166019a2608b08a2c131898da3a01275c7e",
    "realtime_gemini_live": "785e0dd790e072a168662ad6ce29756da307f1502fa27b1e9b35ce5360978cfb",
    "pipeline_deepgram_openai_cartesia_v1.2.18": "acaae7b779e4b6dde523463cc74f6b3382918c48fdf1196c7ed3cc9823eea66d",
}


def test_repository_samples_are_the_captured_sessions_unedited():
    digests = {
        name: hashlib.sha256((samples.SAMPLES_DIR / f"{name}.json").read_bytes()).hexdigest()
        for name in samples.SESSIONS + samples.LEGACY_SESSIONS
    }
    assert digests == SAMPLE_SHA256


def test_a_resend_with_numbers_written_differently_is_still_a_duplicate(agent_client, tenant):
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    metrics = [m for m in samples.shifted_metrics(sample) if m["type"] == "tts_metrics"][:3]
    body = json.dumps({"session_id": "s", "metrics": metrics})
    agent_client.post(METRICS_URL, body)

    # the same timestamps with trailing zeros, as a client that re-serializes numbers might send them
    rewritten = re.sub(r'"timestamp": (\d+\.\d+)', lambda m: f'"timestamp": {m.group(1)}000', body)
    assert rewritten != body
    response = agent_client.post(METRICS_URL, rewritten).json()
    assert (response["accepted"], response["duplicates"]) == (0, 3)
