"""Who is looking at which tenant, with which role — the one place portal views get their tenant from.

The current tenant is kept in the session (the tenant switcher sets it) and always re-checked against the
user's memberships, so a stale or forged session value can only ever fall back to one of the user's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.utils import timezone

from tenants.models import Membership, Tenant

SESSION_KEY = "portal_tenant_id"
MANAGERS = (Membership.Role.OWNER, Membership.Role.ADMIN)


@dataclass(frozen=True)
class Access:
    tenant: Tenant
    role: str
    memberships: list[Membership]

    @property
    def can_manage(self) -> bool:
        """Owners and admins manage agents, keys and budgets; viewers only read."""
        return self.role in MANAGERS

    @property
    def is_owner(self) -> bool:
        return self.role == Membership.Role.OWNER


def resolve(request: HttpRequest) -> Access | None:
    memberships = list(
        Membership.objects.filter(user=request.user, tenant__status=Tenant.Status.ACTIVE)
        .select_related("tenant")
        .order_by("tenant__name")
    )
    if not memberships:
        return None
    wanted = request.session.get(SESSION_KEY)
    current = next((m for m in memberships if m.tenant_id == wanted), memberships[0])
    return Access(current.tenant, current.role, memberships)


def activate_tenant_timezone(request: HttpRequest) -> None:
    """Render the page's dates and times in the current tenant's timezone."""
    timezone.activate(request.access.tenant.timezone)


def tenant_view(*, manage: bool = False, owner: bool = False) -> Callable:
    """Portal view decorator: login required, a tenant resolved from the user's memberships, role checked.

    The view receives ``request.access``; every query in it starts from ``request.access.tenant``.
    """

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            access = resolve(request)
            if access is None:
                raise PermissionDenied("You are not a member of any active tenant.")
            if (manage and not access.can_manage) or (owner and not access.is_owner):
                raise PermissionDenied("Your role in this tenant does not allow this.")
            request.access = access
            return view(request, *args, **kwargs)

        wrapper.tenant_scoped = True
        return wrapper

    return decorate
