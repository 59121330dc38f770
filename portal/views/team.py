"""Team members, roles and invitations, and the switch between the tenants a user belongs to.

Owners change roles and remove members (a tenant keeps at least one owner). Owners and admins invite: the
answer never says whether the address has an account, and nobody joins before opening the e-mailed link
(tenants.invitations).
"""

from __future__ import annotations

import logging
import smtplib

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.core.mail import send_mail
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from portal.access import SESSION_KEY, tenant_view
from portal.forms import InvitationForm, InvitationSignupForm, RoleForm
from tenants import invitations
from tenants.models import Invitation, Membership

log = logging.getLogger(__name__)
# login() must be told the backend when settings list several; axes's only refuses, this one authenticates.
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _team_page(request, *, form=None, status: int = 200):
    tenant = request.access.tenant
    members = Membership.objects.for_tenant(tenant).select_related("user").order_by("user__username")
    allowed = invitations.roles_they_may_invite(request.access.role)
    return render(
        request,
        "portal/team.html",
        {
            "members": members,
            "pending": invitations.pending(tenant).select_related("invited_by"),
            "form": form or InvitationForm(allowed_roles=allowed),
            "roles": Membership.Role.choices,
        },
        status=status,
    )


@tenant_view()
def team(request):
    return _team_page(request)


@require_POST
@tenant_view(manage=True)
def invitation_create(request):
    tenant = request.access.tenant
    form = InvitationForm(request.POST, allowed_roles=invitations.roles_they_may_invite(request.access.role))
    if not form.is_valid():
        return _team_page(request, form=form, status=400)
    email, role = form.cleaned_data["email"], form.cleaned_data["role"]
    # Only this tenant's own members are looked up: the team page lists their addresses anyway.
    if Membership.objects.for_tenant(tenant).filter(user__email__iexact=email).exists():
        messages.info(request, f"{email} is already a member of {tenant.name}.")
        return redirect("portal:team")
    issued = invitations.invite(tenant, email, role, request.user)
    link = request.build_absolute_uri(reverse("portal:invitation", args=[issued.token]))
    context = {
        "invitation": issued.invitation,
        "link": link,
        "inviter": request.user,
        "days": invitations.LIFETIME.days,
    }
    try:
        send_mail(
            f"You are invited to {tenant.name} on Meterline",
            render_to_string("portal/invitation_email.txt", context),
            settings.DEFAULT_FROM_EMAIL,
            [email],
        )
    except (smtplib.SMTPException, OSError):
        log.exception("could not send the invitation e-mail for invitation %s", issued.invitation.pk)
        invitations.revoke(issued.invitation)
        messages.error(
            request, "The e-mail could not be sent, so the invitation was withdrawn. Try again later."
        )
        return redirect("portal:team")
    messages.success(
        request, f"Invitation sent to {email}. The link works for {invitations.LIFETIME.days} days."
    )
    return redirect("portal:team")


@require_POST
@tenant_view(manage=True)
def invitation_revoke(request, pk: int):
    invitation = get_object_or_404(invitations.pending(request.access.tenant), pk=pk)
    invitations.revoke(invitation)
    messages.success(request, f"Invitation for {invitation.email} revoked.")
    return redirect("portal:team")


def _welcome(request, invitation: Invitation):
    request.session[SESSION_KEY] = invitation.tenant_id  # open the tenant just joined
    messages.success(request, f"Welcome to {invitation.tenant.name}.")
    return redirect("portal:dashboard")


def _page(request, invitation: Invitation, state: str, *, form=None, status: int = 200):
    context = {"invitation": invitation, "state": state, "form": form}
    return render(request, "portal/invitation.html", context, status=status)


def _closed(request):
    return render(request, "portal/invitation.html", {"state": "closed"}, status=404)


@never_cache  # the page's address is the secret
@require_http_methods(["GET", "POST"])
def invitation(request, token: str):
    """The e-mailed link. A logged-in account with the invited address joins with one click; without an
    account the person signs up here; an existing account logs in first and comes back."""
    found = invitations.find_open(token)
    if found is None:
        return _closed(request)
    if request.user.is_authenticated:
        if not invitations.is_for(found, request.user):
            return _page(request, found, "other-account", status=403)
        if request.method == "GET":
            return _page(request, found, "join")
        try:
            invitations.accept(found, request.user)
        except (invitations.InvitationClosed, invitations.AnotherAddress):
            return _closed(request)
        return _welcome(request, found)

    if get_user_model().objects.filter(email__iexact=found.email).exists():
        return _page(request, found, "log-in")
    form = InvitationSignupForm(request.POST or None, email=found.email, initial={"username": found.email})
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():  # no account is left behind if the link closed meanwhile
                user = form.save()
                invitations.accept(found, user)
        except invitations.InvitationClosed:
            return _closed(request)
        login(request, user, backend=MODEL_BACKEND)
        return _welcome(request, found)
    return _page(request, found, "sign-up", form=form, status=400 if form.errors else 200)


def _other_owners(membership) -> bool:
    return (
        Membership.objects.for_tenant(membership.tenant)
        .filter(role=Membership.Role.OWNER)
        .exclude(pk=membership.pk)
        .exists()
    )


@require_POST
@tenant_view(owner=True)
def member_role(request, pk: int):
    membership = get_object_or_404(Membership.objects.for_tenant(request.access.tenant), pk=pk)
    form = RoleForm(request.POST)
    if form.is_valid():
        if (
            membership.role == Membership.Role.OWNER
            and form.cleaned_data["role"] != "owner"
            and not _other_owners(membership)
        ):
            messages.error(request, "A tenant keeps at least one owner.")
        else:
            Membership.objects.filter(pk=membership.pk).update(role=form.cleaned_data["role"])
            messages.success(request, "Role changed.")
    return redirect("portal:team")


@require_POST
@tenant_view(owner=True)
def member_remove(request, pk: int):
    membership = get_object_or_404(Membership.objects.for_tenant(request.access.tenant), pk=pk)
    if membership.role == Membership.Role.OWNER and not _other_owners(membership):
        messages.error(request, "A tenant keeps at least one owner.")
    else:
        membership.delete()
        messages.success(request, "Member removed.")
    return redirect("portal:team")


@require_POST
@tenant_view()
def switch_tenant(request):
    try:
        wanted = int(request.POST.get("tenant", ""))
    except ValueError:
        raise Http404 from None
    if not any(m.tenant_id == wanted for m in request.access.memberships):
        raise Http404
    request.session[SESSION_KEY] = wanted
    return redirect("portal:dashboard")
