"""A LiveKit voice agent billed with Meterline: the two-line integration in a real agent.

A dental clinic's phone receptionist (Deepgram STT → OpenAI gpt-4o-mini → Cartesia TTS). Every LLM request,
TTS segment and STT report is forwarded to Meterline while the call runs; the session's start, end and
caller are reported too. If Meterline is unreachable the agent carries on and the usage waits in the local
spool (``~/.cache/meterline/spool``) until the next delivery.

Run it (needs a LiveKit server and provider keys)::

    pip install "./sdk/python[livekit]" "livekit-agents[deepgram,openai,cartesia,silero]~=1.8"  # from a clone
    export LIVEKIT_URL=wss://… LIVEKIT_API_KEY=… LIVEKIT_API_SECRET=…
    export DEEPGRAM_API_KEY=… OPENAI_API_KEY=… CARTESIA_API_KEY=…
    export METERLINE_API_KEY=mlk_live_… METERLINE_BASE_URL=https://billing.example.com
    python livekit_agent.py dev        # or: python livekit_agent.py start

The repository's tests import this file and drive ``start_billing`` with metrics replayed from captured
sessions (tests/sdk/test_livekit.py), since talking to real models needs the keys above.
"""

from __future__ import annotations

import logging

import meterline
from livekit.agents import Agent, AgentSession, JobContext, WorkerOptions, cli
from meterline.livekit import SessionBilling, attach

logger = logging.getLogger("dental-receptionist")


class Receptionist(Agent):
    def __init__(self) -> None:
        super().__init__(
            instructions=(
                "You are the receptionist of the Maple Street dental clinic. Help callers book, move or "
                "cancel appointments. Keep answers short and friendly; you are on the phone."
            )
        )


def build_session() -> AgentSession:
    # Provider plugins are imported here, not at the top, so this module imports without them.
    from livekit.plugins import cartesia, deepgram, openai, silero

    return AgentSession(
        stt=deepgram.STT(model="nova-3"),
        llm=openai.LLM(model="gpt-4o-mini"),
        tts=cartesia.TTS(model="sonic-3"),
        vad=silero.VAD.load(),
    )


_billing_client: meterline.Client | None = None


def billing_client() -> meterline.Client:
    """One Meterline client per process (LiveKit runs each job in its own process)."""
    global _billing_client
    if _billing_client is None:
        _billing_client = meterline.Client()  # METERLINE_API_KEY and METERLINE_BASE_URL from the environment
    return _billing_client


def start_billing(
    session: AgentSession,
    *,
    session_id: str,
    end_user_id: str | None = None,
    client: meterline.Client | None = None,
) -> SessionBilling:
    """Attach Meterline to the session: per-request metrics (the default mode), start/end, end user."""
    return attach(
        session,
        client or billing_client(),
        session_id=session_id,
        end_user_id=end_user_id,
        conversation_type="inbound_call",
    )


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = build_session()
    billing = start_billing(session, session_id=ctx.job.id)  # ← the Meterline integration
    await session.start(agent=Receptionist(), room=ctx.room)

    # The end user is known once the caller joins: a SIP caller's number, else the participant identity.
    participant = await ctx.wait_for_participant()
    billing.set_end_user(participant.attributes.get("sip.phoneNumber") or participant.identity)
    # Nothing else to do: attach() reports the end and flushes at session close / job shutdown.


if __name__ == "__main__":
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))
