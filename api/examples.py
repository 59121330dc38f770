"""The request examples in ``/api/schema/``: what Swagger UI's "Try it out" sends, accepted as shown.

Events are refused outside a window of 35 days back and 5 minutes ahead, so a fixed example would soon be
refused: every schema request writes the examples anew (a drf-spectacular postprocessing hook), with current
timestamps and new ids, so trying one stores new usage rather than a duplicate. The LiveKit objects are
shaped as livekit-agents 1.x dumps them (tests/data/livekit).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def request_examples(now: datetime) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """({operation id: {example name: {summary, value}}}, {operation id: {path parameter: example}})."""
    stamp = now.strftime("%Y%m%dT%H%M%S")
    call, job = f"call-{stamp}", f"AJ_{stamp}"
    tts_segment = {
        "id": f"evt-{stamp}-2",
        "timestamp": _iso(now - timedelta(minutes=1)),
        "session_id": call,
        "provider": "Cartesia",
        "model": "sonic-3",
        "usage": {"tts_characters": "72"},
    }
    bodies = {
        "events_create": {
            "two-events": {
                "summary": "An LLM turn and a TTS segment of one call",
                "value": {
                    "events": [
                        {
                            "id": f"evt-{stamp}-1",
                            "timestamp": _iso(now - timedelta(minutes=2)),
                            "session_id": call,
                            "provider": "api.openai.com",
                            "model": "gpt-4o-mini",
                            "usage": {"llm_input_text_tokens": 1106, "llm_output_text_tokens": 18},
                            "metadata": {"turn": 1, "language": "en"},
                        },
                        tts_segment,
                    ]
                },
            },
            "a-correction": {
                "summary": "The TTS segment again, with the characters counted right",
                "value": {
                    "events": [
                        {
                            **tts_segment,
                            "id": f"evt-{stamp}-2b",
                            "replaces": tts_segment["id"],
                            "usage": {"tts_characters": "68"},
                        }
                    ]
                },
            },
        },
        "livekit_metrics_create": {
            "llm-and-tts-metrics": {
                "summary": "Metrics from a session's metrics_collected events",
                "value": {
                    "session_id": f"{job}m",
                    "metrics": [
                        {
                            "type": "llm_metrics",
                            "label": "livekit.plugins.openai.llm.LLM",
                            "request_id": f"chatcmpl-{stamp}",
                            "timestamp": round((now - timedelta(minutes=2)).timestamp(), 3),
                            "duration": 0.896,
                            "ttft": 0.5811,
                            "cancelled": False,
                            "completion_tokens": 18,
                            "prompt_tokens": 1106,
                            "prompt_cached_tokens": 0,
                            "cache_creation_tokens": 0,
                            "reasoning_tokens": 0,
                            "total_tokens": 1124,
                            "tokens_per_second": 20.0897,
                            "speech_id": "speech_a664f6d40528",
                            "metadata": {"model_name": "gpt-4o-mini", "model_provider": "api.openai.com"},
                        },
                        {
                            "type": "tts_metrics",
                            "label": "livekit.plugins.cartesia.tts.TTS",
                            "request_id": "8eff0264cd01",
                            "timestamp": round((now - timedelta(minutes=1)).timestamp(), 3),
                            "ttfb": 0.122,
                            "duration": 1.6254,
                            "audio_duration": 5.128,
                            "cancelled": False,
                            "characters_count": 72,
                            "streamed": True,
                            "segment_id": "SEG_8bd867e354b9",
                            "speech_id": "speech_a664f6d40528",
                            "metadata": {"model_name": "sonic-3", "model_provider": "Cartesia"},
                        },
                    ],
                },
            }
        },
        "livekit_usage_create": {
            "session-usage": {
                "summary": "AgentSession.usage at shutdown",
                "value": {
                    "session_id": f"{job}u",
                    "timestamp": _iso(now - timedelta(minutes=1)),
                    "usage": [
                        {
                            "type": "llm_usage",
                            "provider": "api.openai.com",
                            "model": "gpt-4o-mini",
                            "input_tokens": 18121,
                            "input_cached_tokens": 15744,
                            "output_tokens": 284,
                        },
                        {
                            "type": "tts_usage",
                            "provider": "Cartesia",
                            "model": "sonic-3",
                            "characters_count": 943,
                        },
                        {
                            "type": "stt_usage",
                            "provider": "Deepgram",
                            "model": "nova-3",
                            "audio_duration": 118.78,
                        },
                    ],
                },
            }
        },
        "sessions_upsert": {
            "call-details": {
                "summary": "Times, caller and type of a call",
                "value": {
                    "started_at": _iso(now - timedelta(minutes=3)),
                    "ended_at": _iso(now - timedelta(seconds=30)),
                    "end_user_id": "+14155550123",
                    "conversation_type": "inbound_call",
                    "metadata": {"room": "dental-line-7f3a", "transferred": False},
                },
            }
        },
    }
    bodies["authorizations_create"] = {
        "hold-by-duration": {
            "summary": "Hold the cost of a five-minute call before it starts",
            "value": {"session_id": call, "amount": "0.50", "ttl_seconds": 900},
        }
    }
    bodies["authorizations_extend"] = {
        "keep-going": {
            "summary": "The call runs on: keep the hold 15 more minutes",
            "value": {"ttl_seconds": 900},
        }
    }
    bodies["authorizations_release"] = {"release": {"summary": "The call was not placed", "value": {}}}
    bodies["events_retract"] = {
        "with-a-reason": {
            "summary": "The LLM turn was reported twice under two ids",
            "value": {"reason": "reported twice by a retry in our agent"},
        }
    }
    return bodies, {
        "sessions_upsert": {"session_id": call},
        "sessions_read": {"session_id": call},
        "events_retract": {"event_id": f"evt-{stamp}-1"},
    }


def add_examples(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular postprocessing hook: put this moment's examples into the generated schema."""
    bodies, path_examples = request_examples(timezone.now())
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            operation_id = operation.get("operationId") if isinstance(operation, dict) else None
            if operation_id in bodies:
                content = operation["requestBody"]["content"]["application/json"]
                content["examples"] = bodies[operation_id]
            for parameter in operation.get("parameters", []) if operation_id in path_examples else []:
                if parameter["name"] in path_examples[operation_id]:
                    parameter["example"] = path_examples[operation_id][parameter["name"]]
    return result
