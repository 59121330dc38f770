"""Team members and roles (owners only change them; a tenant keeps at least one owner), and the switch
between the tenants a user belongs to."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.access import SESSION_KEY, tenant_view
from portal.forms import MemberForm, RoleForm
from tenants.models import Membership


@tenant_view()
def team(request):
    members = (
        Membership.objects.for_tenant(request.access.tenant).select_related("user").order_by("user__username")
    )
    return render(
        request,
        "portal/team.html",
        {"members": members, "form": MemberForm(), "roles": Membership.Role.choices},
    )


@require_POST
@tenant_view(owner=True)
def member_add(request):
    form = MemberForm(request.POST)
    if form.is_valid():
        user = get_user_model().objects.filter(email__iexact=form.cleaned_data["email"]).first()
        _, created = Membership.objects.get_or_create(
            user=user, tenant=request.access.tenant, defaults={"role": form.cleaned_data["role"]}
        )
        messages.success(request, f"{user.email} {'added' if created else 'is already a member'}.")
    else:
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
    return redirect("portal:team")


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
