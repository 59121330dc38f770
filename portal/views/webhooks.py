"""Webhooks: the tenant's endpoints, their health and delivery log; owners and admins manage them.

A signing secret is shown once, on the page after it was made (creation or roll), then never again: not to
managers, and never to viewers, who see endpoints and deliveries only.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from notifications import tasks, webhooks
from notifications.models import WebhookDelivery, WebhookEndpoint
from portal.access import activate_tenant_timezone, tenant_view
from portal.forms import WebhookEndpointForm

NEW_SECRET = "portal_new_webhook_secret"  # noqa: S105 - a session key, not a secret
RECENT_DELIVERIES = 50


def _endpoint(request, pk: int) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint.objects.for_tenant(request.access.tenant), pk=pk)


def _form_errors(form) -> str:
    return "; ".join(e for errors in form.errors.values() for e in errors)


@tenant_view()
def webhooks_page(request):
    activate_tenant_timezone(request)
    endpoints = list(WebhookEndpoint.objects.for_tenant(request.access.tenant))
    return render(
        request,
        "portal/webhooks.html",
        {
            "endpoints": [(e, webhooks.health(e)) for e in endpoints],
            "form": WebhookEndpointForm(),
            "event_types": webhooks.EVENT_TYPES,
            "new_secret": _pop_secret(request),
        },
    )


@require_POST
@tenant_view(manage=True)
def endpoint_create(request):
    form = WebhookEndpointForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("portal:webhooks")
    data = form.cleaned_data
    endpoint = webhooks.create_endpoint(
        request.access.tenant, data["url"], data["description"], data["event_types"]
    )
    request.session[NEW_SECRET] = {"endpoint": endpoint.pk, "secret": endpoint.secret}
    return redirect("portal:webhook", pk=endpoint.pk)


@tenant_view()
def endpoint_detail(request, pk: int):
    activate_tenant_timezone(request)
    endpoint = _endpoint(request, pk)
    if request.method == "POST":
        if not request.access.can_manage:
            raise PermissionDenied("Only owners and admins change webhook endpoints.")
        form = WebhookEndpointForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            webhooks.update_endpoint(endpoint, data["url"], data["description"], data["event_types"])
            messages.success(request, "Endpoint saved.")
            return redirect("portal:webhook", pk=endpoint.pk)
    else:
        form = WebhookEndpointForm(
            initial={
                "url": endpoint.url,
                "description": endpoint.description,
                "event_types": endpoint.event_types,
            }
        )
    deliveries = endpoint.deliveries.select_related("event")[:RECENT_DELIVERIES]
    return render(
        request,
        "portal/webhook_detail.html",
        {
            "endpoint": endpoint,
            "health": webhooks.health(endpoint),
            "form": form,
            "deliveries": deliveries,
            "new_secret": _pop_secret(request, endpoint.pk),
        },
    )


def _pop_secret(request, endpoint_id: int | None = None) -> dict | None:
    shown = request.session.get(NEW_SECRET)
    if shown and (endpoint_id is None or shown["endpoint"] == endpoint_id):
        return request.session.pop(NEW_SECRET)
    return None


@require_POST
@tenant_view(manage=True)
def endpoint_enable(request, pk: int):
    endpoint = _endpoint(request, pk)
    webhooks.set_enabled(endpoint, True)
    messages.success(request, "Endpoint enabled: new events are delivered to it.")
    return redirect("portal:webhook", pk=pk)


@require_POST
@tenant_view(manage=True)
def endpoint_disable(request, pk: int):
    endpoint = _endpoint(request, pk)
    webhooks.set_enabled(endpoint, False, reason=f"Disabled by {request.user.get_username()}.")
    messages.success(request, "Endpoint disabled: nothing more is sent to it until it is enabled.")
    return redirect("portal:webhook", pk=pk)


@require_http_methods(["GET", "POST"])
@tenant_view(manage=True)
def endpoint_delete(request, pk: int):
    """GET asks (a page of its own: the CSP allows no inline ``confirm()``); POST deletes."""
    endpoint = _endpoint(request, pk)
    if request.method == "GET":
        return render(request, "portal/webhook_delete.html", {"endpoint": endpoint})
    endpoint.delete()
    messages.success(request, f"Endpoint {endpoint.url} deleted.")
    return redirect("portal:webhooks")


@require_POST
@tenant_view(manage=True)
def endpoint_roll_secret(request, pk: int):
    endpoint = _endpoint(request, pk)
    secret = webhooks.roll_secret(endpoint)
    request.session[NEW_SECRET] = {"endpoint": endpoint.pk, "secret": secret, "rolled": True}
    return redirect("portal:webhook", pk=pk)


@require_POST
@tenant_view(manage=True)
def endpoint_ping(request, pk: int):
    endpoint = _endpoint(request, pk)
    if not endpoint.is_enabled:
        messages.error(request, "Enable the endpoint before sending it a ping.")
        return redirect("portal:webhook", pk=pk)
    tasks.queue([webhooks.send_ping(endpoint)])
    messages.success(request, "Ping queued; it appears in the deliveries below.")
    return redirect("portal:webhook", pk=pk)


@require_POST
@tenant_view(manage=True)
def delivery_resend(request, pk: int, delivery_pk: int):
    endpoint = _endpoint(request, pk)
    delivery = get_object_or_404(WebhookDelivery.objects.filter(endpoint=endpoint), pk=delivery_pk)
    if webhooks.resend(delivery):
        tasks.queue([delivery.pk])
        messages.success(request, f"Delivery of {delivery.event.type} queued again (same webhook-id).")
    else:
        messages.error(request, "Only a finished delivery of an enabled endpoint can be resent.")
    return redirect("portal:webhook", pk=pk)
