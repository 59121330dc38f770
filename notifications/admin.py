from django.contrib import admin

from notifications import webhooks
from notifications.models import Event, WebhookDelivery, WebhookEndpoint


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "type", "dispatched_at"]
    list_filter = ["type"]
    search_fields = ["tenant__slug", "type"]
    readonly_fields = ["tenant", "type", "data", "created_at", "dispatched_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Platform staff see endpoints and may disable or re-enable one; secrets are never shown here."""

    list_display = ["url", "tenant", "is_enabled", "failing_since", "created_at"]
    list_filter = ["is_enabled"]
    search_fields = ["tenant__slug", "url", "description"]
    fields = [
        "tenant",
        "url",
        "description",
        "event_types",
        "is_enabled",
        "disabled_at",
        "disabled_reason",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    ]
    readonly_fields = [f for f in fields if f not in ("url", "description", "event_types")]
    actions = ["disable", "enable"]

    def has_add_permission(self, request) -> bool:
        return False  # tenants add endpoints in the portal, where the secret is shown to them once

    @admin.action(description="Disable the selected endpoints")
    def disable(self, request, queryset) -> None:
        for endpoint in queryset:
            webhooks.set_enabled(endpoint, False, reason=f"Disabled by Meterline staff ({request.user}).")

    @admin.action(description="Enable the selected endpoints")
    def enable(self, request, queryset) -> None:
        for endpoint in queryset:
            webhooks.set_enabled(endpoint, True)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "event",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
    ]
    list_filter = ["status"]
    search_fields = ["endpoint__url", "endpoint__tenant__slug", "event__type"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
