"""Synthetic LiveKit traffic: tenants with agents, voice sessions that start along a business-hours curve
in the tenant's zone, and each session's metrics events. Deterministic for a seed, so a piece of traffic
can be generated again (by another process, or to resend it) and is the same."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# Agent kinds: what a session of that agent reports.
PIPELINE, OPENAI_REALTIME, GEMINI_LIVE = "pipeline", "openai_realtime", "gemini_live"
GEMINI_MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
CONVERSATION_TYPES = ["inbound_call", "inbound_call", "web_call", "outbound_call"]
# Relative session starts per tenant-local hour of day (business hours peak); weekends × WEEKEND.
HOURLY_SHAPE = [
    0.15, 0.10, 0.08, 0.08, 0.10, 0.20, 0.40, 0.70, 1.00, 1.20, 1.30, 1.30,
    1.20, 1.20, 1.30, 1.30, 1.20, 1.00, 0.80, 0.60, 0.45, 0.35, 0.25, 0.20,
]  # fmt: skip
WEEKEND = 0.45
PIECE_EVENTS = 100_000  # a tenant's traffic is generated (and loaded) in pieces of this many events


@dataclass(frozen=True)
class AgentSpec:
    name: str
    kind: str  # PIPELINE, OPENAI_REALTIME or GEMINI_LIVE
    share: float  # relative share of the tenant's sessions


@dataclass
class TenantSpec:
    slug: str
    name: str
    timezone: str
    events: int
    agents: list[AgentSpec]
    always_on: bool = False  # a 24/7 contact centre: a flatter daily shape
    index: int = 0  # seeds the tenant's random streams
    pk: int = 0
    agent_pks: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Piece:
    """Part of one tenant's traffic: ``events`` events in sessions that start in [first, last)."""

    spec: TenantSpec
    number: int
    events: int
    first: datetime
    last: datetime
    seed: int
    session_prefix: str = ""


@dataclass
class Conversation:
    """One session of one agent: its start and its events (micros, LiveKit type, provider, model, usage
    JSON text with quantities as canonical decimal strings, as ingestion stores them)."""

    agent: int  # position in the tenant's agents
    session_id: str
    conversation_type: str
    start_us: int
    events: list[tuple[int, str, str, str, str]]


def pieces(spec: TenantSpec, first: datetime, last: datetime, seed: int, **extra) -> list[Piece]:
    return [
        Piece(spec, number, min(PIECE_EVENTS, spec.events - offset), first, last, seed, **extra)
        for number, offset in enumerate(range(0, spec.events, PIECE_EVENTS))
    ]


def decimal_text(value: int, places: int) -> str:
    """``value`` / 10**places as ingestion stores it (usage.validation.quantity_text): no trailing zeros."""
    whole, fraction = divmod(value, 10**places)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{places}d}".rstrip("0")


def start_hours(
    timezone: str, first: datetime, last: datetime, always_on: bool
) -> tuple[list[int], list[float]]:
    """UTC hours (UNIX seconds, stepping from ``first``) before ``last`` in which sessions may start, with
    cumulative weights."""
    zone = ZoneInfo(timezone)
    hours, cumulative, total = [], [], 0.0
    instant = int(first.timestamp())
    while instant < last.timestamp():
        local = datetime.fromtimestamp(instant + 1800, zone)
        weight = HOURLY_SHAPE[local.hour] * (WEEKEND if local.weekday() >= 5 else 1.0)
        if always_on:
            weight = 0.5 + weight / 2
        total += weight
        hours.append(instant)
        cumulative.append(total)
        instant += 3600
    return hours, cumulative


def conversations(piece: Piece) -> Iterator[Conversation]:
    """The piece's sessions: each one agent's conversation of 40–120 events (the last may be shorter),
    starting at a time drawn from the tenant's daily shape."""
    spec = piece.spec
    rng = random.Random(f"{piece.seed}/{spec.index}/{piece.number}")
    hours, cumulative = start_hours(spec.timezone, piece.first, piece.last, spec.always_on)
    top = cumulative[-1]
    slots = range(len(spec.agents))
    weights = [agent.share for agent in spec.agents]
    remaining = piece.events
    number = piece.number * 10_000
    while remaining > 0:
        number += 1
        slot = rng.choices(slots, weights=weights)[0]
        agent = spec.agents[slot]
        hour = hours[bisect.bisect_left(cumulative, rng.random() * top)]
        start_us = hour * 1_000_000 + int(rng.random() * 3_600_000_000)
        count = min(remaining, rng.randint(40, 120))
        remaining -= count
        session = (
            f"{piece.session_prefix}{agent.name}-{datetime.fromtimestamp(hour, UTC):%Y%m%d}-{number:07d}"
        )
        events = session_events(agent.kind, count, start_us, rng)
        yield Conversation(slot, session, rng.choice(CONVERSATION_TYPES), start_us, events)


def session_events(kind: str, count: int, start_us: int, rng: random.Random) -> list[tuple]:
    """One conversation's events: (micros, LiveKit metrics type, provider, model, usage JSON text).

    Quantities follow the LiveKit sessions captured in tests/data/livekit (the demo data's distribution):
    Deepgram reports audio in 5 s chunks, gpt-4o-mini's prompt grows and is cached in 128-token steps,
    gpt-realtime reports text and audio tokens with its transcriber alongside.
    """
    rand = rng.random
    events: list[tuple] = []
    t = start_us
    turn = 0
    while len(events) < count:
        t += int(2_000_000 + rand() * 10_000_000)  # the user speaks
        if kind == PIPELINE:
            chunks = 1 + (rand() < 0.55) + (rand() < 0.2)
            for chunk in range(chunks):
                audio = "5" if chunk < chunks - 1 else decimal_text(50 + int(rand() * 450), 2)
                events.append((t, "stt_metrics", "Deepgram", "nova-3", f'{{"stt_audio_seconds": "{audio}"}}'))
                t += 5_000_000 if chunk < chunks - 1 else int(300_000 + rand() * 1_000_000)
            for _ in range(1 + (rand() < 0.2)):  # a tool call makes a second LLM request
                prompt = 40 + int(rand() * 160) if turn else 900 + int(rand() * 250)
                cached = 1024 + 128 * min(turn // 3, 4) if turn and rand() < 0.92 else 0
                output = 8 + int(rand() * 50)
                usage = f'{{"llm_input_text_tokens": "{prompt}", "llm_output_text_tokens": "{output}"' + (
                    f', "llm_input_cached_text_tokens": "{cached}"}}' if cached else "}"
                )
                events.append((t, "llm_metrics", "api.openai.com", "gpt-4o-mini", usage))
                t += int(400_000 + rand() * 1_200_000)
            characters = 30 + int(rand() * 160)
            audio = decimal_text(int(characters * (58 + rand() * 14)), 3)
            usage = f'{{"tts_characters": "{characters}", "tts_audio_seconds": "{audio}"}}'
            events.append((t, "tts_metrics", "Cartesia", "sonic-3", usage))
        elif kind == OPENAI_REALTIME:
            usage = f'{{"stt_input_tokens": "{15 + int(rand() * 20)}", "stt_output_tokens": "{1 + int(rand() * 12)}"}}'
            events.append((t, "stt_metrics", "api.openai.com", "gpt-4o-transcribe", usage))
            t += int(50_000 + rand() * 200_000)
            parts = [
                f'"llm_input_text_tokens": "{(10 + int(rand() * 90)) if turn else (880 + int(rand() * 60))}"',
                f'"llm_input_audio_tokens": "{80 + int(rand() * 160)}"',
                f'"llm_output_text_tokens": "{5 + int(rand() * 40)}"',
                f'"llm_output_audio_tokens": "{25 + int(rand() * 170)}"',
            ]
            if turn:
                parts.append(f'"llm_input_cached_text_tokens": "{896 + 32 * min(turn, 6)}"')
                if rand() < 0.85:
                    parts.append(f'"llm_input_cached_audio_tokens": "{64 * min(turn, 14)}"')
            usage = "{" + ", ".join(parts) + "}"
            events.append((t, "realtime_model_metrics", "api.openai.com", "gpt-realtime", usage))
        else:  # GEMINI_LIVE
            usage = (
                f'{{"llm_input_text_tokens": "{680 + 15 * min(turn, 28)}", '
                f'"llm_output_text_tokens": "{12 + int(rand() * 15)}"'
                + (f', "llm_input_audio_tokens": "{1 + int(rand() * 5)}"}}' if rand() < 0.85 else "}")
            )
            events.append((t, "realtime_model_metrics", "Gemini", GEMINI_MODEL, usage))
        turn += 1
    return events[:count]
