"""Agents and their API keys: list, create an agent, issue a key (shown once), revoke a key (after a
confirmation page, which works without JavaScript)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from portal.access import activate_tenant_timezone, tenant_view
from portal.forms import AgentForm, ApiKeyForm
from tenants.keys import issue_key
from tenants.models import Agent, APIKey


def _agents_page(request, *, key_form=None, agent_form=None, status: int = 200):
    """The agents page; a refused form is shown again with its errors beside the fields and a 400."""
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    return render(
        request,
        "portal/agents.html",
        {
            "agents": Agent.objects.for_tenant(tenant).prefetch_related("api_keys"),
            "key_form": key_form or ApiKeyForm(tenant=tenant),
            "agent_form": agent_form or AgentForm(tenant=tenant),
            "new_key": request.session.pop("portal_new_key", None),
        },
        status=status,
    )


@tenant_view()
def agents(request):
    return _agents_page(request)


@require_POST
@tenant_view(manage=True)
def agent_create(request):
    form = AgentForm(request.POST, tenant=request.access.tenant)
    if not form.is_valid():
        return _agents_page(request, agent_form=form, status=400)
    form.save()
    messages.success(request, f"Agent {form.instance.name} created.")
    return redirect("portal:agents")


@require_POST
@tenant_view(manage=True)
def key_create(request):
    activate_tenant_timezone(request)  # the expiry is typed in the tenant's time zone
    form = ApiKeyForm(request.POST, tenant=request.access.tenant)
    if not form.is_valid():
        return _agents_page(request, key_form=form, status=400)
    issued = issue_key(
        form.cleaned_data["agent"],
        label=form.cleaned_data["label"],
        expires_at=form.cleaned_data["expires_at"],
    )
    # Shown once, on the next page view, then gone from the session.
    request.session["portal_new_key"] = {"agent": issued.api_key.agent.name, "key": issued.plaintext}
    return redirect("portal:agents")


@require_http_methods(["GET", "POST"])
@tenant_view(manage=True)
def key_revoke(request, pk: int):
    """GET asks (a page of its own: a strict CSP leaves no room for an inline ``confirm()``); POST revokes."""
    key = get_object_or_404(APIKey.objects.for_tenant(request.access.tenant).select_related("agent"), pk=pk)
    if request.method == "GET":
        activate_tenant_timezone(request)
        return render(request, "portal/key_revoke.html", {"key": key})
    if key.revoked_at is None:
        APIKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        messages.success(request, f"Key {key.key_id} revoked; it is refused from the next request on.")
    return redirect("portal:agents")
