"""Price plans and their versions in the admin: versions numbered on, locked ones read only, and a new
version copied from any other (``billing.plan_versions``)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import audit, periods, plan_versions, pricing
from billing.admin.audit import PlanAuditMixin, changes_text
from billing.admin.drafts import PlanEditRefreshesDrafts, refresh_plan_drafts_after_commit
from billing.admin.fields import EnteredDecimalsMixin, show_amounts_in
from billing.admin.plan_parts import PlanPartAdmin
from billing.admin.prices import PriceInline
from billing.models import PlanVersion, PricePlan
from billing.money import format_money_with_code


class PricePlanForm(forms.ModelForm):
    class Meta:
        model = PricePlan
        fields = ["name", "slug", "currency", "description"]

    def clean_currency(self) -> str:
        currency = self.cleaned_data["currency"].upper()
        try:
            pricing.currency_exponent(currency)
        except ValueError as error:
            raise ValidationError(str(error)) from error
        return currency


class PlanVersionForm(forms.ModelForm):
    class Meta:
        model = PlanVersion
        fields = ["plan", "version", "effective_from", "base_fee", "fee_per_active_agent"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "version" in self.fields:
            self.fields["version"].required = False
            self.fields["version"].help_text = "Empty: the next number."
        show_amounts_in(self, self.instance.plan.currency if self.instance.plan_id else None)

    def _plan(self) -> PricePlan | None:
        plan = self.cleaned_data.get("plan")
        if plan is None and self.instance.plan_id:
            plan = self.instance.plan
        return plan if plan is not None and plan.pk else None

    def clean(self):
        cleaned = super().clean()
        plan = self._plan()
        if plan is None:
            return cleaned
        if "version" in self.fields and cleaned.get("version") is None:
            cleaned["version"] = plan_versions.next_version_number(plan)
            self.is_numbered_automatically = True
        start = cleaned.get("effective_from")
        if start is not None and (self.instance._state.adding or "effective_from" in self.changed_data):
            try:
                plan_versions.check_start(plan, start)
            except ValueError as error:
                self.add_error("effective_from", str(error))
        fees = {n: cleaned[n] for n in ("base_fee", "fee_per_active_agent") if cleaned.get(n) is not None}
        try:
            pricing.Plan(currency=plan.currency, **fees)
        except ValueError as error:
            raise ValidationError(str(error)) from error
        return cleaned


class PlanVersionFormSet(BaseInlineFormSet):
    """Versions on their plan's page: locked ones are shown but cannot change; new ones are numbered on."""

    def _construct_form(self, i, **kwargs):
        form = super()._construct_form(i, **kwargs)
        if form.instance.pk is not None and form.instance.is_locked:
            keys = {self.model._meta.pk.name, self.fk.name}  # they pick the row: still posted
            for name, field in form.fields.items():
                field.disabled = name not in keys
        return form

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        new = [
            f
            for f in self.forms
            if f.instance._state.adding and f.has_changed() and not self._should_delete_form(f)
        ]
        unnumbered = [
            f
            for f in new
            if getattr(f, "is_numbered_automatically", False) or not f.cleaned_data.get("version")
        ]
        taken = {f.cleaned_data.get("version") for f in self.forms if f.cleaned_data and f not in unnumbered}
        if self.instance.pk:
            taken |= set(self.instance.versions.values_list("version", flat=True))
        last = max((n for n in taken if n), default=0)
        for form in unnumbered:
            last += 1
            form.cleaned_data["version"] = form.instance.version = last


class PlanVersionInline(EnteredDecimalsMixin, admin.TabularInline):
    model = PlanVersion
    form = PlanVersionForm
    formset = PlanVersionFormSet
    fields = ["version", "effective_from", "base_fee", "fee_per_active_agent", "is_locked"]
    readonly_fields = ["is_locked"]
    extra = 0
    show_change_link = True


@admin.register(PricePlan)
class PricePlanAdmin(PlanEditRefreshesDrafts, PlanAuditMixin, admin.ModelAdmin):
    form = PricePlanForm
    list_display = ["name", "slug", "currency", "current_version", "version_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [PlanVersionInline]
    fields = ["name", "slug", "currency", "description", "created_at", "audit_trail"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(version_count=Count("versions"))

    def get_readonly_fields(self, request, obj=None):
        readonly = ["created_at", "audit_trail"]
        if obj is not None and obj.versions.filter(is_locked=True).exists():
            readonly.append("currency")  # invoiced versions keep the currency they were billed in
        return readonly

    @admin.display(description="in force today")
    def current_version(self, plan: PricePlan) -> str:
        version = plan.version_on(timezone.localdate())
        return f"v{version.version} (from {version.effective_from})" if version else "—"

    @admin.display(description="versions", ordering="version_count")
    def version_count(self, plan: PricePlan) -> int:
        return plan.version_count

    @admin.display(description="audit trail (latest edits)")
    def audit_trail(self, plan: PricePlan) -> str:
        if plan.pk is None:
            return "—"
        entries = list(plan.audit_entries.select_related("user")[:20])
        everything = reverse("admin:billing_planauditentry_changelist") + f"?plan__id__exact={plan.pk}"
        if not entries:
            return format_html('No edits recorded yet. <a href="{}">Full trail</a>', everything)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    timezone.localtime(e.at).strftime("%Y-%m-%d %H:%M"),
                    e.user or "—",
                    e.action,
                    e.object_repr,
                    changes_text(e.changes),
                )
                for e in entries
            ),
        )
        return format_html(
            "<table><thead><tr><th>when</th><th>who</th><th>action</th><th>what</th><th>changes</th></tr>"
            '</thead><tbody>{}</tbody></table><p><a href="{}">Full trail</a></p>',
            rows,
            everything,
        )


class NewVersionForm(forms.Form):
    effective_from = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The first day the new version prices (a tenant-local date).",
    )


@admin.register(PlanVersion)
class PlanVersionAdmin(PlanPartAdmin):
    form = PlanVersionForm
    list_display = [
        "__str__",
        "plan",
        "version",
        "effective_from",
        "base_fee_text",
        "agent_fee_text",
        "is_locked",
        "price_count",
    ]
    list_filter = ["plan", "is_locked"]
    list_select_related = ["plan"]
    inlines = [PriceInline]
    actions = ["new_version"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(price_count=Count("prices"))

    def get_fields(self, request, obj=None):
        fields = ["plan", "version", "effective_from", "base_fee", "fee_per_active_agent"]
        return fields if obj is None else [*fields, "is_locked", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["plan", "version", "is_locked", "created_at"]

    @admin.display(description="base fee", ordering="base_fee")
    def base_fee_text(self, version: PlanVersion) -> str:
        return format_money_with_code(version.base_fee, version.plan.currency)

    @admin.display(description="fee per active agent", ordering="fee_per_active_agent")
    def agent_fee_text(self, version: PlanVersion) -> str:
        return format_money_with_code(version.fee_per_active_agent, version.plan.currency)

    @admin.display(description="prices", ordering="price_count")
    def price_count(self, version: PlanVersion) -> int:
        return version.price_count

    @admin.action(description="Create a new version from this one", permissions=["add"])
    def new_version(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to copy.", messages.WARNING)
            return None
        return HttpResponseRedirect(
            reverse("admin:billing_planversion_new_version", args=[queryset.get().pk])
        )

    def get_urls(self):
        return [
            path(
                "<path:object_id>/new-version/",
                self.admin_site.admin_view(self.new_version_view),
                name="billing_planversion_new_version",
            ),
            *super().get_urls(),
        ]

    def new_version_view(self, request, object_id):
        """Copy a version (locked or not) with its prices and tiers as the plan's next version."""
        source = self.get_object(request, unquote(object_id))
        if source is None:
            raise Http404
        if not (self.has_add_permission(request) and self.has_view_permission(request, source)):
            raise PermissionDenied
        first_of_next_month = periods.next_month(timezone.localdate())
        form = NewVersionForm(request.POST or None, initial={"effective_from": first_of_next_month})
        if request.method == "POST" and form.is_valid():
            try:
                version = plan_versions.copy_version(source, form.cleaned_data["effective_from"])
            except ValueError as error:
                form.add_error("effective_from", str(error))
            else:
                audit.record(
                    version,
                    user=request.user,
                    action=audit.NEW_VERSION,
                    changes={
                        "copied_from": [None, str(source)],
                        "effective_from": [None, version.effective_from.isoformat()],
                    },
                )
                refresh_plan_drafts_after_commit(version.plan_id)
                self.message_user(
                    request, f"Created {version} with the prices of v{source.version}.", messages.SUCCESS
                )
                return HttpResponseRedirect(reverse("admin:billing_planversion_change", args=[version.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"New version of {source.plan.name} from v{source.version}",
            "source": source,
            "prices": source.prices.prefetch_related("tiers"),
            "form": form,
        }
        return TemplateResponse(request, "admin/billing/planversion/new_version.html", context)
