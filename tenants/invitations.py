"""Invitations: how a person joins a tenant (DESIGN §2).

An owner or admin invites an e-mail address with a role; the address receives a one-time link. Whoever opens
it signs up (no account with that address yet) or logs in (an account has it), then joins with the role. The
inviter learns nothing about the address: the answer is the same whether an account has it or not, and nobody
is added before they accept.

The link carries 256 random bits; the database keeps their SHA-256, so a leaked table opens nothing (a fast
hash is enough for a secret that cannot be guessed). Invitations expire after ``LIFETIME``, are single-use
and can be revoked while open.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from tenants.models import Invitation, Membership, Tenant

LIFETIME = timedelta(days=7)


class InvitationClosed(Exception):
    """The invitation was accepted, revoked or expired in the meantime."""


class AnotherAddress(Exception):
    """The account accepting does not have the invited address: an invitation makes the person who reads
    that mailbox a member, so the team page always shows the address the inviter typed."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str  # the only copy: it goes into the e-mail and is never stored


def roles_they_may_invite(inviter_role: str) -> list[str]:
    """Owners invite any role; admins invite admins and viewers (never more than themselves)."""
    if inviter_role == Membership.Role.OWNER:
        return [r.value for r in Membership.Role]
    return [Membership.Role.ADMIN.value, Membership.Role.VIEWER.value]


def invite(tenant: Tenant, email: str, role: str, invited_by) -> IssuedInvitation:
    """Open an invitation for ``email``; an open one for the same address is revoked (a resend)."""
    email = email.strip().lower()
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        Invitation.objects.for_tenant(tenant).filter(
            email=email, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=now)
        invitation = Invitation.objects.create(
            tenant=tenant,
            email=email,
            role=role,
            token_hash=hash_token(token),
            invited_by=invited_by,
            created_at=now,
            expires_at=now + LIFETIME,
        )
    return IssuedInvitation(invitation, token)


def find_open(token: str) -> Invitation | None:
    """The open invitation a link's token names, or None (unknown, used, revoked, expired, or a suspended
    tenant) — the link page says the same for all of them."""
    if not token or len(token) > 100:
        return None
    invitation = Invitation.objects.select_related("tenant").filter(token_hash=hash_token(token)).first()
    if invitation is None or not invitation.is_open() or not invitation.tenant.is_active:
        return None
    return invitation


def pending(tenant: Tenant):
    """Open invitations, for the team page."""
    return Invitation.objects.for_tenant(tenant).filter(
        accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )


def accept(invitation: Invitation, user) -> Membership:
    """Make ``user`` a member with the invited role, once: the row lock makes a second acceptance (another
    tab, a replayed form) fail with InvitationClosed. A person already in the tenant keeps their role."""
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if not locked.is_open():
            raise InvitationClosed
        if not is_for(locked, user):
            raise AnotherAddress
        membership, _ = Membership.objects.get_or_create(
            user=user, tenant_id=locked.tenant_id, defaults={"role": locked.role}
        )
        locked.accepted_at = timezone.now()
        locked.accepted_by = user
        locked.save(update_fields=["accepted_at", "accepted_by"])
    return membership


def is_for(invitation: Invitation, user) -> bool:
    return (user.email or "").strip().lower() == invitation.email


def revoke(invitation: Invitation) -> None:
    Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
