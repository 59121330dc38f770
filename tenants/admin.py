from django.contrib import admin, messages
from django.utils import timezone

from tenants.keys import issue_key
from tenants.models import Agent, APIKey, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class AgentInline(admin.TabularInline):
    model = Agent
    extra = 0
    fields = ["name", "status", "created_at"]
    readonly_fields = ["created_at"]
    show_change_link = True


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "currency", "timezone", "status", "created_at"]
    list_filter = ["status", "currency"]
    search_fields = ["name", "slug", "billing_email"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, AgentInline]


class APIKeyInline(admin.TabularInline):
    model = APIKey
    extra = 0
    fields = ["key_id", "label", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["key_id", "created_at", "last_used_at"]
    can_delete = False

    def has_add_permission(
        self, request, obj=None
    ):  # keys are issued by the action, which shows the secret once
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "status", "created_at"]
    list_filter = ["status", "tenant"]
    search_fields = ["name", "tenant__name", "tenant__slug"]
    inlines = [APIKeyInline]
    actions = ["issue_api_key"]

    @admin.action(description="Issue a new API key (shown once)")
    def issue_api_key(self, request, queryset):
        for agent in queryset:
            issued = issue_key(agent, label=f"issued in admin by {request.user}")
            self.message_user(
                request,
                f"New key for {agent}: {issued.plaintext} — copy it now, it is not shown again.",
                messages.WARNING,
            )


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = [
        "key_id",
        "agent",
        "tenant",
        "label",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["tenant"]
    search_fields = ["key_id", "agent__name", "label"]
    readonly_fields = ["tenant", "agent", "key_id", "created_at", "last_used_at"]
    exclude = ["secret_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]
