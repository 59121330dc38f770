from django.contrib import admin

from notifications.models import Event


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
