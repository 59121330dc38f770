"""DRF authentication and throttling for agent API keys (``Authorization: Bearer mlk_live_…``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions, throttling

from tenants.keys import parse_key, secret_matches
from tenants.models import Agent, APIKey, Tenant

# last_used_at is refreshed at most this often per key, so a busy agent costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=5)
INVALID_KEY_MESSAGE = "The API key is missing, malformed, unknown, revoked or expired."


@dataclass(frozen=True)
class AgentPrincipal:
    """What ``request.user`` is for an API-key request: the agent, its tenant and the key used."""

    api_key: APIKey
    agent: Agent
    tenant: Tenant

    is_authenticated = True
    is_anonymous = False

    @property
    def pk(self) -> int:
        return self.api_key.pk


class APIKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, presented = header.partition(" ")
        parsed = parse_key(presented.strip()) if scheme == self.keyword else None
        if parsed is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE)
        key_id, secret = parsed
        now = timezone.now()
        api_key = APIKey.objects.select_related("agent", "tenant").filter(key_id=key_id).first()
        if (
            api_key is None
            or not secret_matches(api_key, secret)
            or not api_key.is_usable(now)
            or not api_key.agent.is_active
            or not api_key.tenant.is_active
        ):
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE)
        if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=api_key.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
            ).update(last_used_at=now)
        return AgentPrincipal(api_key, api_key.agent, api_key.tenant), api_key

    def authenticate_header(self, request) -> str:
        return f'{self.keyword} realm="meterline"'


class APIKeyRateThrottle(throttling.SimpleRateThrottle):
    """Requests per API key (per client address before authentication succeeds)."""

    scope = "api_key"

    def get_cache_key(self, request, view):
        if isinstance(request.user, AgentPrincipal):
            ident = f"key:{request.user.api_key.key_id}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


try:
    from drf_spectacular.extensions import OpenApiAuthenticationExtension
except (
    ImportError
):  # pragma: no cover - drf-spectacular is a hard dependency; this keeps the module importable
    OpenApiAuthenticationExtension = None

if OpenApiAuthenticationExtension is not None:

    class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
        target_class = "tenants.authentication.APIKeyAuthentication"
        name = "AgentAPIKey"

        def get_security_definition(self, auto_schema):
            return {"type": "http", "scheme": "bearer", "bearerFormat": "mlk_live_<id>_<secret>"}
