"""Tenants' subscriptions, edited on the tenant page. The tenant admin is extended here because billing may
import tenants, not the other way round."""

from __future__ import annotations

from itertools import pairwise

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.utils import timezone

from billing import subscriptions
from billing.admin.drafts import refresh_tenant_drafts_after_commit
from billing.models import Subscription
from tenants.admin import TenantAdmin
from tenants.models import Tenant


class SubscriptionFormSet(BaseInlineFormSet):
    """A tenant's subscriptions: no overlaps, the tenant's currency, and no change to an invoiced period
    (``billing.subscriptions.invoiced_changes``). A new subscription after the open one ends that one
    (``billing.subscriptions.replaced_ends``), so switching plans takes one save.

    The rows are checked together here, as the whole set: every subscription of the tenant is a row."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        self.ended = self._end_replaced()
        tenant = self.instance
        live = [f for f in self.forms if f.cleaned_data and not self._should_delete_form(f)]
        problems = []
        spans = sorted(
            (f.cleaned_data["starts_on"], f.cleaned_data.get("ends_on"))
            for f in live
            if f.cleaned_data.get("starts_on")
        )
        for (start, end), (next_start, _) in pairwise(spans):
            if end is None or end > next_start:
                problems.append(f"The subscription from {start} overlaps the one from {next_start}.")
        today = timezone.localdate()
        for form in live:
            plan, end = form.cleaned_data.get("plan"), form.cleaned_data.get("ends_on")
            if plan is not None and plan.currency != tenant.currency and (end is None or end > today):
                problems.append(
                    f"{plan} is priced in {plan.currency}; {tenant} is billed in {tenant.currency}."
                )
        problems += subscriptions.invoiced_changes(tenant, self.edits())
        if problems:
            raise ValidationError(problems)

    def _end_replaced(self) -> list[Subscription]:
        ends = subscriptions.replaced_ends(self.edits())
        ended = []
        for form in self.forms:
            if form.instance.pk in ends:
                form.cleaned_data["ends_on"] = form.instance.ends_on = ends[form.instance.pk]
                form.changed_data.append("ends_on")  # so it is saved, and checked as an edit
                ended.append(form.instance)
        return ended

    def edits(self) -> list[subscriptions.SubscriptionEdit]:
        """The rows as the billing rules read them."""
        return [
            subscriptions.SubscriptionEdit(
                subscription_id=form.instance.pk,
                is_deleted=self._should_delete_form(form),
                values=form.cleaned_data,
                changed=frozenset(form.changed_data),
            )
            for form in self.forms
        ]


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    formset = SubscriptionFormSet
    fields = ["plan", "starts_on", "ends_on"]
    extra = 0


admin.site.unregister(Tenant)


@admin.register(Tenant)
class BilledTenantAdmin(TenantAdmin):
    inlines = [*TenantAdmin.inlines, SubscriptionInline]

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        refresh_tenant_drafts_after_commit(form.instance.pk)

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        for subscription in getattr(formset, "ended", []):
            self.message_user(
                request,
                f"{subscription.plan} now ends on {subscription.ends_on}: the new subscription replaces it.",
            )
