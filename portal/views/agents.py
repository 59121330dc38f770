"""Agents and their API keys: list, create an agent, issue a key (shown once), revoke a key."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.access import activate_tenant_timezone, tenant_view
from portal.forms import AgentForm, ApiKeyForm
from tenants.keys import issue_key
from tenants.models import Agent, APIKey


@tenant_view()
def agents(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    agent_list = Agent.objects.for_tenant(tenant).prefetch_related("api_keys")
    return render(
        request,
        "portal/agents.html",
        {
            "agents": agent_list,
            "key_form": ApiKeyForm(tenant=tenant),
            "agent_form": AgentForm(tenant=tenant),
            "new_key": request.session.pop("portal_new_key", None),
        },
    )


@require_POST
@tenant_view(manage=True)
def agent_create(request):
    form = AgentForm(request.POST, tenant=request.access.tenant)
    if form.is_valid():
        form.save()
        messages.success(request, f"Agent {form.instance.name} created.")
    else:
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
    return redirect("portal:agents")


@require_POST
@tenant_view(manage=True)
def key_create(request):
    form = ApiKeyForm(request.POST, tenant=request.access.tenant)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("portal:agents")
    issued = issue_key(
        form.cleaned_data["agent"],
        label=form.cleaned_data["label"],
        expires_at=form.cleaned_data["expires_at"],
    )
    # Shown once, on the next page view, then gone from the session.
    request.session["portal_new_key"] = {"agent": issued.api_key.agent.name, "key": issued.plaintext}
    return redirect("portal:agents")


@require_POST
@tenant_view(manage=True)
def key_revoke(request, pk: int):
    key = get_object_or_404(APIKey.objects.for_tenant(request.access.tenant), pk=pk)
    if key.revoked_at is None:
        APIKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        messages.success(request, f"Key {key.key_id} revoked; it is refused from the next request on.")
    return redirect("portal:agents")
