"""The audit trail of price-plan edits (DESIGN §8): who changed which field of which plan, and when.

Plans, their versions, prices and tiers are edited in the admin; each add, change and delete there is
written to ``PlanAuditEntry`` as ``{field: [before, after]}`` with both values as text, so the trail reads
the same whatever later happens to the objects it names.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from django import forms
from django.db import models
from django.forms.models import InlineForeignKeyField

from billing.models import PlanAuditEntry, PlanVersion, Price, PricePlan, PriceTier

ADDED = "added"
CHANGED = "changed"
DELETED = "deleted"
NEW_VERSION = "new_version"

Changes = dict[str, list[str | None]]


def plan_of(obj: PricePlan | PlanVersion | Price | PriceTier) -> PricePlan:
    """The plan an edited object belongs to."""
    if isinstance(obj, PriceTier):
        obj = obj.price
    if isinstance(obj, Price):
        obj = obj.version
    if isinstance(obj, PlanVersion):
        obj = obj.plan
    return obj


def describe(obj: PricePlan | PlanVersion | Price | PriceTier) -> str:
    """The object with its parents (``Pro v2 (from 2026-05-01) › tts_characters [any] graduated``), so an
    entry says which version a price or tier belonged to."""
    if isinstance(obj, PriceTier):
        return f"{describe(obj.price)} › {obj}"
    if isinstance(obj, Price):
        return f"{obj.version} › {obj}"
    return str(obj)


def as_text(value: object) -> str | None:
    """A field value as the trail stores it: decimals without trailing zeros, dates in ISO form."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _form_value_text(field: forms.Field, value: object) -> str | None:
    # A model choice is a primary key (or to_field value) in ``initial`` but an object once cleaned: show both
    # as the object's name.
    if (
        isinstance(field, forms.ModelChoiceField)
        and value not in (None, "")
        and not isinstance(value, models.Model)
    ):
        key = field.to_field_name or "pk"
        value = field.queryset.filter(**{key: value}).first() or value
    return as_text(value)


def form_changes(form: forms.BaseForm, *, adding: bool) -> Changes:
    """``{field: [before, after]}``: every field of an added object (before is ``None``), the changed fields
    of a changed one. The parent of an inline form is left out: the entry names it."""
    changes: Changes = {}
    names = form.fields if adding else form.changed_data
    for name in names:
        field = form.fields.get(name)
        if field is None or name in ("DELETE", "id") or isinstance(field, InlineForeignKeyField):
            continue
        if name not in form.cleaned_data:
            continue
        before = None if adding else _form_value_text(field, form.get_initial_for_field(field, name))
        after = _form_value_text(field, form.cleaned_data[name])
        if before != after:
            changes[name] = [before, after]
    return changes


def snapshot(obj: models.Model) -> Changes:
    """Every editable field of an object as ``[value, None]``: what a deletion removed."""
    return {
        field.name: [as_text(getattr(obj, field.attname)), None]
        for field in obj._meta.concrete_fields
        if field.editable and not field.primary_key
    }


def record(
    obj: PricePlan | PlanVersion | Price | PriceTier, *, user, action: str, changes: Changes
) -> PlanAuditEntry:
    return PlanAuditEntry.objects.create(
        plan=plan_of(obj),
        user=user if user is not None and user.is_authenticated else None,
        action=action,
        object_repr=describe(obj)[:300],
        changes=changes,
    )
