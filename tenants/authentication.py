"""DRF authentication and throttling for agent API keys (``Authorization: Bearer mlk_live_…``), and the
client address that throttles and the login lockout key on."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions, throttling

from tenants.keys import parse_key, secret_matches
from tenants.models import Agent, APIKey, Tenant

# last_used_at is refreshed at most this often per key, so a busy agent costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=5)
INVALID_KEY_MESSAGE = "The API key is missing, malformed, unknown, revoked or expired."


def client_address(request) -> str | None:
    """The address a request came from, as the login lockout (django-axes) and the API throttle key on.

    Behind ``TRUSTED_PROXY_COUNT`` proxies that each append the address they received from to
    X-Forwarded-For, the client is the entry that many places from the right (the same rule as DRF's
    ``NUM_PROXIES``): entries further left were written by the client and prove nothing. With no trusted
    proxy (the default) the header is ignored, so a forged one can neither spread a lockout nor evade it.
    """
    remote = request.META.get("REMOTE_ADDR")
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded.strip():
        return remote
    entries = [entry.strip() for entry in forwarded.split(",")]
    candidate = entries[-min(proxies, len(entries))]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote  # a proxy that appends something else than an address is misconfigured


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


@cache
def _key_query() -> tuple[str, list[tuple[type, list[str], list[list]]]]:
    """One plain query for a key with its agent and tenant. The ORM's ``select_related`` spent about 2 ms of
    CPU per request compiling the same SQL (a quarter of a one-event request); this is built once per process
    from the models' own fields, and rows become model instances through the fields' converters."""
    parts, columns = [], []
    for model, alias in ((APIKey, "k"), (Agent, "a"), (Tenant, "t")):
        fields = model._meta.concrete_fields
        columns += [f'{alias}."{f.column}"' for f in fields]
        converters = [
            [*connection.ops.get_db_converters(f), *f.get_db_converters(connection)] for f in fields
        ]
        parts.append((model, [f.attname for f in fields], converters))
    sql = (
        f"SELECT {', '.join(columns)} FROM tenants_apikey k "  # noqa: S608 - column names from the models
        # the agent joined on its tenant as well: a join of two distributed tables on their distribution column,
        # which Citus runs on each node (decision 024), since a key is found by its id alone
        "JOIN tenants_agent a ON a.tenant_id = k.tenant_id AND a.id = k.agent_id "
        "JOIN tenants_tenant t ON t.id = k.tenant_id "
        "WHERE k.key_id = %s"
    )
    return sql, parts


def find_key(key_id: str) -> APIKey | None:
    """The key with ``key_id``, its ``agent`` and ``tenant`` loaded, or None."""
    sql, parts = _key_query()
    with connection.cursor() as cursor:
        cursor.execute(sql, [key_id])
        row = cursor.fetchone()
    if row is None:
        return None
    instances, offset = [], 0
    for model, names, converters in parts:
        values = list(row[offset : offset + len(names)])
        offset += len(names)
        for i, field_converters in enumerate(converters):
            for convert in field_converters:
                values[i] = convert(values[i], model._meta.concrete_fields[i], connection)
        instances.append(model.from_db(connection.alias, names, values))
    api_key, agent, tenant = instances
    api_key.agent, api_key.tenant = agent, tenant
    return api_key


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
        api_key = find_key(key_id)
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
            ident = f"ip:{client_address(request)}"
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
