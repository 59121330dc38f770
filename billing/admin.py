"""Billing admin for platform staff (DESIGN §8): price plans, provider rates, subscriptions, invoices, the
audit trail of plan edits and the invoice preview.

Nothing here computes a price: forms check prices by building the ``billing.pricing`` dataclasses (so the
admin cannot store a plan the engine would refuse), actions call ``billing.invoicing`` and
``billing.plan_versions``, and ``billing.audit`` writes the trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, F, Max
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import audit, invoicing, period_pricing, periods, plan_versions, pricing
from billing.models import (
    Invoice,
    InvoiceLine,
    PlanAuditEntry,
    PlanVersion,
    Price,
    PricePlan,
    PriceTier,
    ProviderRate,
    Subscription,
)
from payments.admin import retry_stripe_sync, stripe_invoice_link, stripe_sync_summary
from tenants.admin import TenantAdmin
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# --- numbers as staff read them: money always with its currency code, never through a float ----------------


def money(amount: Decimal | None, currency: str) -> str:
    if amount is None:
        return "—"
    try:
        exponent = pricing.currency_exponent(currency)
    except ValueError:
        exponent = 2
    return f"{Decimal(amount).quantize(Decimal(1).scaleb(-exponent), rounding=ROUND_HALF_UP):,} {currency}"


def quantity(value: Decimal | None) -> str:
    if value is None:
        return "—"
    value = Decimal(value).normalize()
    return f"{int(value):,}" if value == value.to_integral_value() else f"{value:,f}"


def unit_price(amount: Decimal | None, unit_size: Decimal, currency: str) -> str:
    """``0.30 USD per 1,000,000``: the full precision of a rate, at least the currency's minor unit."""
    if amount is None:
        return "—"
    try:
        exponent = pricing.currency_exponent(currency)
    except ValueError:
        exponent = 2
    value = Decimal(amount).normalize()
    if value.as_tuple().exponent > -exponent:
        value = value.quantize(Decimal(1).scaleb(-exponent))
    per = f" per {quantity(unit_size)}" if unit_size != 1 else ""
    return f"{value:,f} {currency}{per}"


def margin_percent(margin: Decimal, total: Decimal) -> str:
    if not total:
        return "—"
    return f"{(margin * 100 / total).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} %"


def changes_text(changes: Mapping[str, list]) -> str:
    return "; ".join(
        f"{name}: {before if before is not None else '—'} → {after if after is not None else '—'}"
        for name, (before, after) in changes.items()
    )


# --- prices checked by the pricing engine's own dataclasses ------------------------------------------------

PRICE_ARGUMENTS = [
    "provider",
    "model_pattern",
    "price_model",
    "unit_amount",
    "unit_size",
    "package_size",
    "package_amount",
    "markup",
    "free_allowance",
    "minimum_charge",
]
PRICE_FIELDS = ["meter", *PRICE_ARGUMENTS]
TIERED = {pricing.PriceModel.GRADUATED, pricing.PriceModel.VOLUME}
SAME_SCOPE_HINT = " (provider and model pattern are compared regardless of case)"


def as_pricing_price(meter: object, values: Mapping, tiers: Iterable[pricing.Tier]) -> pricing.Price:
    return pricing.Price(
        meter=getattr(meter, "code", meter), tiers=tuple(tiers), **{n: values[n] for n in PRICE_ARGUMENTS}
    )


def stored_pricing_price(price: Price) -> pricing.Price:
    return period_pricing.price_for(price)


def check_version_prices(currency: str, prices: Iterable[pricing.Price]) -> None:
    """Raise ValidationError if the prices cannot form one plan version (two prices on the same scope)."""
    try:
        pricing.Plan(currency=currency, prices=tuple(prices))
    except ValueError as error:
        raise ValidationError(f"{error}{SAME_SCOPE_HINT}") from error


def _is_locked(obj: PlanVersion | Price | None) -> bool:
    if isinstance(obj, Price):
        return obj.version_id is not None and obj.version.is_locked
    return isinstance(obj, PlanVersion) and obj.is_locked


class LockedVersionMixin:
    """A locked version (a finalized invoice used it) and its prices are read only: viewable, never changed
    or deleted — not even by a bulk delete, which Django checks against the model, not each object."""

    def has_change_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        deleted, counts, refused, protected = super().get_deleted_objects(objs, request)
        refused |= {f"{obj} (locked: a finalized invoice used it)" for obj in objs if _is_locked(obj)}
        return deleted, counts, refused, protected


class LockedVersionInlineMixin:
    """Inlines under a locked version or a price of one (``obj`` is the parent) are read only."""

    def has_add_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not _is_locked(obj) and super().has_delete_permission(request, obj)


# --- the audit trail ------------------------------------------------------------------------------------------

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


# --- price plans ----------------------------------------------------------------------------------------------


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


class PlanVersionInline(admin.TabularInline):
    model = PlanVersion
    form = PlanVersionForm
    formset = PlanVersionFormSet
    fields = ["version", "effective_from", "base_fee", "fee_per_active_agent", "is_locked"]
    readonly_fields = ["is_locked"]
    extra = 0
    show_change_link = True


@admin.register(PricePlan)
class PricePlanAdmin(PlanAuditMixin, admin.ModelAdmin):
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


# --- plan versions ---------------------------------------------------------------------------------------


class PriceForm(forms.ModelForm):
    """A price as the engine will read it. Where tiers are not edited alongside (a version's page), the
    check uses the stored tiers."""

    is_standalone = False  # the price's own page: tiers come in a formset, sibling prices from the database

    class Meta:
        model = Price
        fields = ["version", *PRICE_FIELDS]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        values = {n: cleaned[n] if n in cleaned else getattr(self.instance, n) for n in PRICE_ARGUMENTS}
        meter = cleaned.get("meter") or self.instance.meter_id
        model = pricing.PriceModel(values["price_model"])
        if self.is_standalone:
            tiers = [pricing.Tier(None)] if model in TIERED else []  # the tier formset checks the real ones
        else:
            tiers = self._stored_tiers()
            if model in TIERED and not tiers:
                raise ValidationError(
                    f"{model} prices need tiers, which are edited on the price's own page: add or change "
                    "this price there."
                )
        try:
            self.pricing_price = as_pricing_price(meter, values, tiers)
        except ValueError as error:
            hint = (
                " (its tiers are edited on the price's own page)" if tiers and not self.is_standalone else ""
            )
            raise ValidationError(f"{error}{hint}") from error
        version = cleaned.get("version") or (self.instance.version if self.instance.version_id else None)
        if self.is_standalone and version is not None:
            check_version_prices(version.plan.currency, [*self._stored_siblings(version), self.pricing_price])
        return cleaned

    def _stored_tiers(self) -> list[pricing.Tier]:
        if self.instance.pk is None:
            return []
        return [pricing.Tier(t.up_to, t.unit_amount, t.flat_amount) for t in self.instance.tiers.all()]

    def _stored_siblings(self, version: PlanVersion) -> list[pricing.Price]:
        siblings = []
        for price in version.prices.exclude(pk=self.instance.pk).prefetch_related("tiers"):
            try:
                siblings.append(stored_pricing_price(price))
            except ValueError:
                continue  # a stored price the engine refuses is reported on its own page, not this one
        return siblings


class StandalonePriceForm(PriceForm):
    is_standalone = True


class PriceFormSet(BaseInlineFormSet):
    """A version's prices together must form one plan the engine accepts."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        prices = [
            form.pricing_price
            for form in self.forms
            if hasattr(form, "pricing_price") and not self._should_delete_form(form)
        ]
        currency = self.instance.plan.currency if self.instance.plan_id else "USD"
        check_version_prices(currency, prices)


class PriceInline(LockedVersionInlineMixin, admin.TabularInline):
    model = Price
    form = PriceForm
    formset = PriceFormSet
    fields = [*PRICE_FIELDS, "tier_summary"]
    readonly_fields = ["tier_summary"]
    extra = 0
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tiers")

    @admin.display(description="tiers")
    def tier_summary(self, price: Price) -> str:
        if price.pk is None:
            return "—"
        return "; ".join(str(t) for t in price.tiers.all()) or "—"


class NewVersionForm(forms.Form):
    effective_from = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The first day the new version prices (a tenant-local date).",
    )


@admin.register(PlanVersion)
class PlanVersionAdmin(LockedVersionMixin, PlanAuditMixin, admin.ModelAdmin):
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
        return money(version.base_fee, version.plan.currency)

    @admin.display(description="fee per active agent", ordering="fee_per_active_agent")
    def agent_fee_text(self, version: PlanVersion) -> str:
        return money(version.fee_per_active_agent, version.plan.currency)

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


# --- prices and tiers ------------------------------------------------------------------------------------


class PriceTierForm(forms.ModelForm):
    class Meta:
        model = PriceTier
        fields = ["up_to", "unit_amount", "flat_amount"]

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                self.tier = pricing.Tier(cleaned.get("up_to"), cleaned["unit_amount"], cleaned["flat_amount"])
            except ValueError as error:
                raise ValidationError(str(error)) from error
        return cleaned


class PriceTierFormSet(BaseInlineFormSet):
    """The tiers of one price, checked together with its price model as the engine will read them."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        tiers = [
            form.tier for form in self.forms if hasattr(form, "tier") and not self._should_delete_form(form)
        ]
        # The engine reads tiers in the model's order: by bound, the unbounded one last.
        tiers.sort(key=lambda t: (t.up_to is None, t.up_to or 0))
        price = self.instance
        if price.price_model not in set(pricing.PriceModel):
            return  # the price's own form reports it
        try:
            pricing.Price(meter=price.meter_id or "", price_model=price.price_model, tiers=tuple(tiers))
        except ValueError as error:
            raise ValidationError(str(error)) from error


class PriceTierInline(LockedVersionInlineMixin, admin.TabularInline):
    model = PriceTier
    form = PriceTierForm
    formset = PriceTierFormSet
    extra = 0


@admin.register(Price)
class PriceAdmin(LockedVersionMixin, PlanAuditMixin, admin.ModelAdmin):
    form = StandalonePriceForm
    list_display = [
        "__str__",
        "version",
        "price_model",
        "unit_price_text",
        "free_allowance_text",
        "minimum_charge_text",
    ]
    list_filter = ["version__plan", "price_model", "meter"]
    list_select_related = ["version__plan"]
    search_fields = ["meter__code", "provider", "model_pattern"]
    inlines = [PriceTierInline]

    def get_fields(self, request, obj=None):
        return ["version", *PRICE_FIELDS]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["version"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "version":
            kwargs["queryset"] = PlanVersion.objects.filter(is_locked=False).select_related("plan")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="price")
    def unit_price_text(self, price: Price) -> str:
        currency = price.version.plan.currency
        if price.price_model == pricing.PriceModel.PACKAGE:
            return unit_price(price.package_amount, price.package_size, currency)
        if price.price_model == pricing.PriceModel.COST_PLUS:
            return f"provider cost + {quantity(price.markup * 100)} %"
        if price.price_model in TIERED:
            return "tiered"
        return unit_price(price.unit_amount, price.unit_size, currency)

    @admin.display(description="free allowance", ordering="free_allowance")
    def free_allowance_text(self, price: Price) -> str:
        return quantity(price.free_allowance)

    @admin.display(description="minimum charge", ordering="minimum_charge")
    def minimum_charge_text(self, price: Price) -> str:
        return money(price.minimum_charge, price.version.plan.currency)


@admin.register(PlanAuditEntry)
class PlanAuditEntryAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- provider rates ------------------------------------------------------------------------------------------


class ProviderRateForm(forms.ModelForm):
    class Meta:
        model = ProviderRate
        fields = [
            "provider",
            "model_pattern",
            "meter",
            "cost_per_unit",
            "unit_size",
            "currency",
            "effective_from",
            "source",
        ]

    def clean_currency(self) -> str:
        return self.cleaned_data["currency"].upper()

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                pricing.ProviderRate(
                    provider=cleaned["provider"],
                    model_pattern=cleaned["model_pattern"],
                    meter=cleaned["meter"].code,
                    cost_per_unit=cleaned["cost_per_unit"],
                    unit_size=cleaned["unit_size"],
                    effective_from=cleaned["effective_from"],
                    currency=cleaned["currency"],
                )
            except ValueError as error:
                raise ValidationError(str(error)) from error
        return cleaned


@admin.register(ProviderRate)
class ProviderRateAdmin(admin.ModelAdmin):
    form = ProviderRateForm
    list_display = ["provider", "model_pattern", "meter", "cost_text", "effective_from", "source"]
    list_filter = ["provider", "meter", "currency", "effective_from"]
    search_fields = ["provider", "model_pattern", "meter__code", "source"]
    date_hierarchy = "effective_from"

    @admin.display(description="cost", ordering="cost_per_unit")
    def cost_text(self, rate: ProviderRate) -> str:
        return unit_price(rate.cost_per_unit, rate.unit_size, rate.currency)


# --- tenants' subscriptions (registered here: billing may import tenants, not the other way round) ----------


class SubscriptionFormSet(BaseInlineFormSet):
    """A tenant's subscriptions: no overlaps, the tenant's currency, and no change to an invoiced period.

    Late usage of a finalized period is re-priced under the subscriptions of that period; changing them
    would re-bill it through adjustment lines, so changes take effect after the last finalized period.
    """

    def clean(self):
        super().clean()
        if any(self.errors):
            return
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
        first_open = self._first_open_day()
        if first_open is not None:
            problems += self._invoiced_changes(first_open)
        if problems:
            raise ValidationError(problems)

    def _first_open_day(self) -> date | None:
        if self.instance.pk is None:
            return None
        invoiced = Invoice.objects.for_tenant(self.instance).finalized()
        return invoiced.aggregate(end=Max("period_end"))["end"]

    def _invoiced_changes(self, first_open: date) -> list[str]:
        def touches_invoiced(day: date | None) -> bool:
            return day is not None and day < first_open

        rule = f"periods before {first_open} are invoiced: changes take effect on or after {first_open}"
        stored = {s.pk: s for s in Subscription.objects.for_tenant(self.instance).select_related("plan")}
        problems = []
        for form in self.forms:
            before = stored.get(form.instance.pk)
            if before is not None and self._should_delete_form(form):
                if touches_invoiced(before.starts_on):
                    problems.append(f"{before} cannot be deleted: {rule}.")
                continue
            if not form.cleaned_data or not form.has_changed():
                continue
            data, changed = form.cleaned_data, set(form.changed_data)
            if before is None:
                if touches_invoiced(data.get("starts_on")):
                    problems.append(f"A subscription cannot start on {data['starts_on']}: {rule}.")
                continue
            if changed & {"plan", "starts_on"} and (
                touches_invoiced(before.starts_on) or touches_invoiced(data.get("starts_on"))
            ):
                problems.append(f"{before} cannot change its plan or start: {rule}.")
            if "ends_on" in changed and (
                touches_invoiced(before.ends_on) or touches_invoiced(data.get("ends_on"))
            ):
                problems.append(f"{before} cannot end on {data.get('ends_on') or 'no date'}: {rule}.")
        return problems


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    formset = SubscriptionFormSet
    fields = ["plan", "starts_on", "ends_on"]
    extra = 0


admin.site.unregister(Tenant)


@admin.register(Tenant)
class BilledTenantAdmin(TenantAdmin):
    inlines = [*TenantAdmin.inlines, SubscriptionInline]


# --- invoices -------------------------------------------------------------------------------------------------


def _refresh(invoice: Invoice) -> str:
    if invoice.is_finalized:
        raise ValueError("it is finalized and never changes")
    invoice = invoicing.generate_invoice(invoice.tenant_id, invoice.period_start)
    return f"Refreshed {invoice}: {money(invoice.total, invoice.currency)}."


def _finalize(invoice: Invoice) -> str:
    if invoice.is_finalized:
        raise ValueError(f"it is already finalized ({invoice.status})")
    invoice = invoicing.finalize_invoice(invoice.pk, force=True)
    return f"Finalized {invoice} for {invoice.tenant}: {money(invoice.total, invoice.currency)}."


def _void(invoice: Invoice) -> str:
    invoice = invoicing.void_invoice(invoice.pk)
    return f"Voided {invoice}."


# name → (label, operation, statuses it applies to)
INVOICE_OPERATIONS: dict[str, tuple[str, Callable[[Invoice], str], set[str]]] = {
    "refresh": ("Refresh draft", _refresh, {Invoice.Status.DRAFT}),
    "finalize": ("Finalize now", _finalize, {Invoice.Status.DRAFT}),
    "void": ("Void", _void, {Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE}),
}


class InvoiceLineInline(admin.TabularInline):
    """Lines are generated, so they are always read only."""

    model = InvoiceLine
    fields = [
        "position",
        "kind",
        "description",
        "segment",
        "quantity_text",
        "allowance_text",
        "billable_text",
        "unit_price_text",
        "amount_text",
        "platform_cost_text",
        "margin_text",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("invoice")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="dates")
    def segment(self, line: InvoiceLine) -> str:
        text = f"{line.segment_start} – {line.segment_end}"
        if line.adjusted_period_start:
            text += f" (corrects {line.adjusted_period_start:%B %Y})"
        return text

    @admin.display(description="quantity")
    def quantity_text(self, line: InvoiceLine) -> str:
        return quantity(line.quantity)

    @admin.display(description="allowance")
    def allowance_text(self, line: InvoiceLine) -> str:
        return quantity(line.allowance)

    @admin.display(description="billable")
    def billable_text(self, line: InvoiceLine) -> str:
        return quantity(line.billable_quantity)

    @admin.display(description="unit price")
    def unit_price_text(self, line: InvoiceLine) -> str:
        return unit_price(line.unit_price, line.unit_size, line.invoice.currency)

    @admin.display(description="amount")
    def amount_text(self, line: InvoiceLine) -> str:
        return money(line.amount, line.invoice.currency)

    @admin.display(description="platform cost")
    def platform_cost_text(self, line: InvoiceLine) -> str:
        return money(line.platform_cost, line.invoice.currency)

    @admin.display(description="margin")
    def margin_text(self, line: InvoiceLine) -> str:
        if line.platform_cost is None:
            return "—"
        return money(line.amount - line.platform_cost, line.invoice.currency)


def unmatched_table(unmatched: list[dict]) -> str:
    """Usage no price matched, as an HTML table: it is never billed, so it must be seen."""
    if not unmatched:
        return "None"
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} – {}</td></tr>",
        (
            (
                u.get("meter"),
                u.get("provider") or "—",
                u.get("model") or "—",
                quantity(Decimal(u.get("quantity", "0"))),
                u.get("reason"),
                u.get("segment_start"),
                u.get("segment_end"),
            )
            for u in unmatched
        ),
    )
    return format_html(
        '<p class="errornote">{} usage group(s) matched no price and are not billed.</p>'
        "<table><thead><tr><th>meter</th><th>provider</th><th>model</th><th>quantity</th><th>reason</th>"
        "<th>dates</th></tr></thead><tbody>{}</tbody></table>",
        len(unmatched),
        rows,
    )


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices are generated: every field is read only, drafts included; the only edits are the actions."""

    list_display = [
        "invoice_number",
        "tenant",
        "period",
        "status",
        "total_text",
        "currency",
        "platform_cost_text",
        "margin_text",
        "unmatched_count",
        stripe_sync_summary,
    ]
    list_filter = ["status", "currency", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["number", "tenant__name", "tenant__slug"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline]
    actions = ["refresh_drafts", "finalize_now", "void", retry_stripe_sync]
    main_fields = ["number", "tenant", "period", "status", "currency"]
    amount_fields = ["total_text", "platform_cost_text", "margin_text"]
    date_fields = ["generated_at", "finalized_at", "status_changed_at", "created_at"]
    shown_elsewhere = {"period_start", "period_end", "total", "platform_cost", "unmatched"}

    def get_fieldsets(self, request, obj=None):
        listed = {*self.main_fields, *self.date_fields, *self.shown_elsewhere}
        others = [f.name for f in Invoice._meta.concrete_fields if not f.primary_key and f.name not in listed]
        unmatched = ("Unmatched usage (not billed)", {"fields": ["unmatched_usage"]})
        fieldsets = [
            (None, {"fields": self.main_fields}),
            ("Amounts", {"fields": self.amount_fields}),
            unmatched,
            ("Dates", {"fields": self.date_fields}),
        ]
        if others:
            fieldsets.append(("Stripe and other", {"fields": [*others, stripe_invoice_link]}))
        if obj is not None and obj.unmatched:
            fieldsets.remove(unmatched)
            fieldsets.insert(0, unmatched)
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.get_fieldsets(request, obj) for name in options["fields"]]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="number", ordering="number")
    def invoice_number(self, invoice: Invoice) -> str:
        return invoice.number or "(draft)"

    @admin.display(description="period", ordering="period_start")
    def period(self, invoice: Invoice) -> str:
        last_day = invoice.period_end.toordinal() - 1
        return f"{invoice.period_start} – {date.fromordinal(last_day)}"

    @admin.display(description="total", ordering="total")
    def total_text(self, invoice: Invoice) -> str:
        return money(invoice.total, invoice.currency)

    @admin.display(description="platform cost", ordering="platform_cost")
    def platform_cost_text(self, invoice: Invoice) -> str:
        return money(invoice.platform_cost, invoice.currency)

    @admin.display(description="margin", ordering=F("total") - F("platform_cost"))
    def margin_text(self, invoice: Invoice) -> str:
        margin = invoice.total - invoice.platform_cost
        return f"{money(margin, invoice.currency)} ({margin_percent(margin, invoice.total)})"

    @admin.display(description="unmatched")
    def unmatched_count(self, invoice: Invoice) -> str:
        if not invoice.unmatched:
            return "—"
        return format_html('<strong style="color: var(--error-fg)">⚠ {}</strong>', len(invoice.unmatched))

    @admin.display(description="unmatched usage")
    def unmatched_usage(self, invoice: Invoice) -> str:
        return unmatched_table(invoice.unmatched)

    def _run(self, request, invoices: Iterable[Invoice], name: str) -> None:
        """Apply one operation to each invoice; report each outcome, never a 500."""
        label, operation, _ = INVOICE_OPERATIONS[name]
        for invoice in invoices:
            try:
                message = operation(invoice)
            except ValueError as error:
                self.message_user(request, f"{label}: {invoice} not changed: {error}.", messages.ERROR)
            except Exception as error:
                logger.exception("admin %s of invoice %s failed", name, invoice.pk)
                self.message_user(
                    request,
                    f"{label}: {invoice} failed ({type(error).__name__}: {error}); see the server log.",
                    messages.ERROR,
                )
            else:
                self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Refresh draft", permissions=["change"])
    def refresh_drafts(self, request, queryset):
        self._run(request, queryset, "refresh")

    @admin.action(description="Finalize now", permissions=["change"])
    def finalize_now(self, request, queryset):
        self._run(request, queryset.order_by("period_start", "pk"), "finalize")

    @admin.action(description="Void", permissions=["change"])
    def void(self, request, queryset):
        self._run(request, queryset, "void")

    def get_urls(self):
        return [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="billing_invoice_preview"),
            path(
                "<path:object_id>/run/<str:operation>/",
                self.admin_site.admin_view(self.operation_view),
                name="billing_invoice_operation",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        invoice = self.get_object(request, unquote(object_id))
        operations = []
        if invoice is not None and self.has_change_permission(request):
            operations = [(n, op[0]) for n, op in INVOICE_OPERATIONS.items() if invoice.status in op[2]]
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "invoice_operations": operations}
        )

    def operation_view(self, request, object_id, operation):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        invoice = self.get_object(request, unquote(object_id))
        if invoice is None or operation not in INVOICE_OPERATIONS:
            raise Http404
        self._run(request, [invoice], operation)
        return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[invoice.pk]))

    def preview_view(self, request):
        """Price a tenant's usage for any period under any plan, with cost and margin. Stores nothing."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = InvoicePreviewForm(request.GET if "tenant" in request.GET else None)
        preview = None
        if form.is_bound and form.is_valid():
            try:
                preview = invoice_preview(**form.cleaned_data)
            except ValueError as error:
                form.add_error(None, f"This plan cannot price usage: {error}")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Preview an invoice",
            "form": form,
            "preview": preview,
        }
        return TemplateResponse(request, "admin/billing/invoice/preview.html", context)


class InvoicePreviewForm(forms.Form):
    tenant = forms.ModelChoiceField(Tenant.objects.order_by("name"))
    plan = forms.ModelChoiceField(
        PricePlan.objects.order_by("name"),
        required=False,
        empty_label="(the tenant's own subscriptions)",
        help_text="Any plan, to see what the tenant would pay under it.",
    )
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    end = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The first day after the period (exclusive), in the tenant's time zone.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        start = periods.month_start(timezone.localdate())
        self.fields["start"].initial = start
        self.fields["end"].initial = periods.next_month(start)

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end <= start:
            raise ValidationError("The end must come after the start.")
        return cleaned


def invoice_preview(tenant: Tenant, plan: PricePlan | None, start: date, end: date) -> dict:
    """What ``period_pricing.price_period`` gives, laid out for the preview page (read-only)."""
    priced = period_pricing.price_period(tenant, start, end, plan=plan)
    currency = priced.currency
    lines = [
        {
            "description": line.description,
            "kind": line.kind,
            "quantity": quantity(line.quantity),
            "allowance": quantity(line.allowance),
            "billable": quantity(line.billable_quantity),
            "unit_price": unit_price(line.unit_price, line.unit_size, currency),
            "amount": money(line.amount, currency),
            "platform_cost": money(line.platform_cost, currency),
            "margin": "—"
            if line.platform_cost is None
            else money(line.amount - line.platform_cost, currency),
        }
        for line in priced.lines
    ]
    margin = priced.total - priced.platform_cost
    return {
        "tenant": tenant,
        "plan": plan,
        "start": start,
        "end": end,
        "currency": currency,
        "lines": lines,
        "total": priced.total,
        "total_text": money(priced.total, currency),
        "platform_cost_text": money(priced.platform_cost, currency),
        "margin_text": money(margin, currency),
        "margin_percent": margin_percent(margin, priced.total),
        "uncosted": sum(1 for line in priced.lines if line.kind == "usage" and line.platform_cost is None),
        "unmatched": unmatched_table(priced.unmatched) if priced.unmatched else "",
    }
