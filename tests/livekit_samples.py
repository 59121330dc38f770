"""The captured LiveKit sessions, with their timestamps shifted to end just before "now".

The API refuses events older than 35 days, so every timestamp of a session is moved by the same offset
(never by widening the window).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "data" / "livekit"
SESSIONS = ["pipeline_deepgram_openai_cartesia", "realtime_openai_gpt_realtime", "realtime_gemini_live"]
LEGACY_SESSIONS = ["pipeline_deepgram_openai_cartesia_v1.2.18"]


def load(name: str) -> dict:
    return json.loads((SAMPLES_DIR / f"{name}.json").read_text())


def shifted_metrics(sample: dict, end_at: float | None = None) -> list[dict]:
    end_at = time.time() - 60 if end_at is None else end_at
    offset = end_at - sample["session"]["ended_at"]
    return [dict(m, timestamp=m["timestamp"] + offset) for m in sample["metrics"]]


def final_model_usage(sample: dict) -> list[dict]:
    return sample["session_usage_updated_final"]["usage"]["model_usage"]
