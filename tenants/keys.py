"""API key format, issuing and verification (DESIGN §2).

A key reads ``mlk_live_<key id>_<secret>``: the id is public and indexed, the secret is 43 base62
characters (256 bits). The database keeps HMAC-SHA256(secret) under a server-side key — fast enough to
check on every request, useless to whoever reads a dump. The full key is returned once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction

from tenants.models import Agent, APIKey

KEY_PREFIX = "mlk_live_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_RE = re.compile(r"mlk_live_([0-9a-f]{12})_([0-9A-Za-z]{43})")  # fullmatch: "$" would let "\n" in


def hash_secret(secret: str) -> str:
    return hmac.new(settings.API_KEY_HMAC_SECRET.encode(), secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: APIKey
    plaintext: str


def issue_key(agent: Agent, label: str = "", expires_at: datetime | None = None) -> IssuedKey:
    """Create a key for ``agent``; the returned plaintext is the only copy that will ever exist."""
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(43))
    with transaction.atomic():
        while True:
            key_id = secrets.token_hex(6)
            if not APIKey.objects.filter(key_id=key_id).exists():
                break
        api_key = APIKey.objects.create(
            tenant_id=agent.tenant_id,
            agent=agent,
            key_id=key_id,
            secret_hash=hash_secret(secret),
            label=label,
            expires_at=expires_at,
        )
    return IssuedKey(api_key, f"{KEY_PREFIX}{key_id}_{secret}")


def parse_key(presented: str) -> tuple[str, str] | None:
    """Split a presented key into (key id, secret), or None when it is not shaped like one of ours."""
    match = _KEY_RE.fullmatch(presented)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(api_key: APIKey, secret: str) -> bool:
    return hmac.compare_digest(api_key.secret_hash, hash_secret(secret))
