"""Locked plan versions in the admin: a version a finalized invoice used, and its prices and tiers, are read
only (DESIGN §5)."""

from __future__ import annotations

from django.contrib.admin.utils import flatten_fieldsets

from billing.admin.fields import read_only_fieldsets
from billing.models import PlanVersion, Price


def _is_locked(obj: PlanVersion | Price | None) -> bool:
    if isinstance(obj, Price):
        return obj.version_id is not None and obj.version.is_locked
    return isinstance(obj, PlanVersion) and obj.is_locked


class LockedVersionMixin:
    """A locked version (a finalized invoice used it) and its prices are read only: viewable, never changed
    or deleted — not even by a bulk delete, which Django checks against the model, not each object. Its
    decimals read as entered (``billing.admin.fields.read_only_fieldsets``)."""

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        return read_only_fieldsets(self.model, fieldsets) if _is_locked(obj) else fieldsets

    def has_change_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        deleted, counts, refused, protected = super().get_deleted_objects(objs, request)
        refused |= {f"{obj} (locked: a finalized invoice used it)" for obj in objs if _is_locked(obj)}
        return deleted, counts, refused, protected


class LockedVersionInlineMixin:
    """Inlines under a locked version or a price of one (``obj`` is the parent) are read only, their decimals
    as entered."""

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        return read_only_fieldsets(self.model, fieldsets) if _is_locked(obj) else fieldsets

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        if not _is_locked(obj):
            return readonly
        # no inputs for them (the inline names its fields, so this does not ask the form for them)
        return [*readonly, *flatten_fieldsets(self.get_fieldsets(request, obj))]

    def has_add_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_delete_permission(request, obj)
