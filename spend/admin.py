"""Spend control in the admin (issue 15 part 9): each tenant's policy, and the pre-call holds (read only)."""

from django.contrib import admin

from spend.models import Hold, SpendPolicy


@admin.register(SpendPolicy)
class SpendPolicyAdmin(admin.ModelAdmin):
    list_display = ["tenant", "policy", "overdraft", "updated_at"]
    list_filter = ["policy"]
    search_fields = ["tenant__slug", "tenant__name"]
    fields = ["tenant", "policy", "overdraft"]


@admin.register(Hold)
class HoldAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "session_id",
        "amount",
        "currency",
        "expires_at",
        "released_at",
        "release_reason",
    ]
    list_filter = ["release_reason"]
    search_fields = ["tenant__slug", "session_id"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Hold._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
