"""Meterline: usage-based billing for voice-AI agents.

``Client`` / ``AsyncClient`` talk to the ingestion API with batching, retries and a durable spool;
``meterline.livekit.attach`` bills a LiveKit ``AgentSession`` (import ``meterline.livekit`` for it).
"""

from meterline._core import FlushResult, IngestResult
from meterline._version import __version__
from meterline.client import AsyncClient, Client, Event
from meterline.errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    InsufficientBalanceError,
    MeterlineError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Event",
    "FlushResult",
    "IngestResult",
    "InsufficientBalanceError",
    "MeterlineError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "ValidationError",
    "__version__",
]
