from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from usage import corrections
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
    """For admins and inlines of evidence, which is never edited by hand: usage (an event is corrected by a
    retraction, usage.corrections, never by an edit) and, above it, what billing records (invoice lines, the
    audit trail of plan edits)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RetractedFilter(admin.SimpleListFilter):
    title = "counted"
    parameter_name = "retracted"

    def lookups(self, request, model_admin):
        return [("no", "Counted"), ("yes", "Retracted")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(retracted_at__isnull=self.value() == "no")
        return queryset


class RetractionForm(forms.Form):
    reason = forms.CharField(
        max_length=corrections.MAX_REASON_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Required, kept with the event and sent to the tenant's webhooks (usage.corrected).",
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"]
        if not reason.strip():
            raise forms.ValidationError("Give a reason.")
        return reason


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """Events as sent, read only. Staff with the "retract" permission may retract one, with a reason, through
    the same service agents use (usage.corrections); who and why are kept on the event and in the admin log."""

    list_display = [
        "event_id",
        "tenant",
        "agent",
        "timestamp",
        "provider",
        "model",
        "source",
        "received_at",
        "retraction",
    ]
    list_filter = ["tenant", "source", RetractedFilter]
    search_fields = ["event_id", "session_id"]
    date_hierarchy = "timestamp"
    show_full_result_count = False

    @admin.display(description="retracted")
    def retraction(self, event: UsageEvent) -> str:
        match event.retracted_by:
            case "replacement":
                return f"replaced by {event.retracted_by_event_id}"
            case "":
                return ""
            case who:
                return f"by {who}"

    def get_urls(self):
        return [
            path(
                "<path:object_id>/retract/",
                self.admin_site.admin_view(self.retract_view),
                name="usage_usageevent_retract",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        event = self.get_object(request, unquote(object_id))
        retractable = event is not None and not event.is_retracted and self._may_retract(request)
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "may_retract": retractable}
        )

    def _may_retract(self, request) -> bool:
        return request.user.has_perm("usage.retract_usageevent")

    def retract_view(self, request, object_id):
        if not self._may_retract(request):
            raise PermissionDenied
        event = self.get_object(request, unquote(object_id))
        if event is None:
            raise Http404
        form = RetractionForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            reason = form.cleaned_data["reason"]
            try:
                corrections.retract(event.tenant, event.event_id, user=request.user, reason=reason)
            except corrections.CorrectionRefused as refused:
                form.add_error(None, refused.detail)
            else:
                self.log_change(request, event, f"Retracted: {reason}")
                messages.success(request, f"Event {event.event_id} retracted: it no longer counts anywhere.")
                return HttpResponseRedirect(reverse("admin:usage_usageevent_change", args=[event.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Retract event {event.event_id}",
            "event": event,
            "form": form,
        }
        return TemplateResponse(request, "admin/usage/usageevent/retract.html", context)


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
