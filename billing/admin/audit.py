"""The audit trail of plan edits in the admin (DESIGN §8): the mixin that records every edit made on a plan,
version, price or tier page, and the read-only trail itself. ``billing.audit`` writes the entries."""

from __future__ import annotations

from collections.abc import Mapping

from django.contrib import admin
from django.db import transaction

from billing import audit
from billing.models import PlanAuditEntry, PlanVersion, Price, PricePlan, PriceTier
from usage.admin import ReadOnlyAdmin


def changes_text(changes: Mapping[str, list]) -> str:
    return "; ".join(
        f"{name}: {before if before is not None else '—'} → {after if after is not None else '—'}"
        for name, (before, after) in changes.items()
    )


AUDITED_MODELS = (PricePlan, PlanVersion, Price, PriceTier)


class PlanAuditMixin:
    """Writes every add, change and delete made on the page — the object and its inlines — to the plan's
    audit trail, in the same transaction as the edit."""

    def save_model(self, request, obj, form, change):
        changes = audit.form_changes(form, adding=not change)
        super().save_model(request, obj, form, change)
        if changes or not change:
            audit.record(
                obj, user=request.user, action=audit.CHANGED if change else audit.ADDED, changes=changes
            )

    def delete_model(self, request, obj):
        self._record_deletion(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self._record_deletion(request, obj)
            super().delete_queryset(request, queryset)

    def _record_deletion(self, request, obj):
        # A deleted plan takes its trail with it (PlanAuditEntry.plan cascades): nothing to record there.
        if not isinstance(obj, PricePlan):
            audit.record(obj, user=request.user, action=audit.DELETED, changes=audit.snapshot(obj))

    def save_formset(self, request, form, formset, change):
        if not issubclass(formset.model, AUDITED_MODELS):
            return super().save_formset(request, form, formset, change)
        pending = {}
        for inline_form in formset.forms:
            if formset._should_delete_form(inline_form):
                if inline_form.instance.pk is not None:
                    pending[id(inline_form.instance)] = audit.snapshot(inline_form.instance)
            elif inline_form.has_changed():
                adding = inline_form.instance._state.adding
                pending[id(inline_form.instance)] = audit.form_changes(inline_form, adding=adding)
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            audit.record(obj, user=request.user, action=audit.ADDED, changes=pending.get(id(obj), {}))
        for obj, _ in formset.changed_objects:
            if pending.get(id(obj)):
                audit.record(obj, user=request.user, action=audit.CHANGED, changes=pending[id(obj)])
        for obj in formset.deleted_objects:
            audit.record(obj, user=request.user, action=audit.DELETED, changes=pending.get(id(obj), {}))


@admin.register(PlanAuditEntry)
class PlanAuditEntryAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """The trail is evidence: read only."""

    list_display = ["at", "plan", "user", "action", "object_repr", "changes_text"]
    list_filter = ["plan", "action"]
    list_select_related = ["plan", "user"]
    search_fields = ["object_repr", "user__username"]
    date_hierarchy = "at"
    fields = ["at", "plan", "user", "action", "object_repr", "changes_text"]
    readonly_fields = fields

    @admin.display(description="changes (before → after)")
    def changes_text(self, entry: PlanAuditEntry) -> str:
        return changes_text(entry.changes)
