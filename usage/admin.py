from django.contrib import admin

from usage.models import AgentRollup, Meter, Session, UsageEvent, UsageRollup


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "unit", "description", "is_active", "display_order"]
    list_editable = ["is_active", "display_order"]


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ["session_id", "tenant", "agent", "started_at", "ended_at", "livekit_report_mode"]
    list_filter = ["tenant", "livekit_report_mode"]
    search_fields = ["session_id", "end_user_id"]
    readonly_fields = ["tenant", "agent", "session_id", "livekit_report_mode", "created_at", "updated_at"]


class ReadOnlyAdmin:
    """For admins and inlines of evidence, which is never edited by hand: usage (corrections are credits on
    the invoice) and, above it, what billing records (invoice lines, the audit trail of plan edits)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["event_id", "tenant", "agent", "timestamp", "provider", "model", "source", "received_at"]
    list_filter = ["tenant", "source"]
    search_fields = ["event_id", "session_id"]
    date_hierarchy = "timestamp"
    show_full_result_count = False


class RollupAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["hour", "tenant", "agent", "meter", "provider", "model", "quantity_text", "event_count"]
    list_filter = ["tenant", "meter"]
    show_full_result_count = False
    exclude = ["quantity"]
    readonly_fields = ["quantity_text"]

    @admin.display(description="quantity", ordering="quantity")
    def quantity_text(self, rollup: UsageRollup | AgentRollup) -> str:
        return rollup.quantity_text


@admin.register(UsageRollup)
class UsageRollupAdmin(RollupAdmin):
    pass


@admin.register(AgentRollup)
class AgentRollupAdmin(RollupAdmin):
    pass
