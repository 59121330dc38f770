"""Coupons in the admin (issue 16 part 3, decision 019): staff make coupons and apply them to tenants. Applying
goes through billing.discounts.apply (expiry, redemption limit, currency, once per tenant); a coupon that has
been applied is not edited (make a new one), and the tenant's draft invoices are refreshed after commit."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from billing import discounts
from billing.admin.drafts import refresh_tenant_drafts_after_commit
from billing.models import AppliedCoupon, Coupon
from billing.pricing import round_money
from usage.models import Meter


class CouponForm(forms.ModelForm):
    class Meta:
        model = Coupon
        fields = [
            "code",
            "name",
            "percent_off",
            "amount_off",
            "currency",
            "duration",
            "duration_periods",
            "meters",
            "models_only",
            "max_redemptions",
            "redeem_by",
        ]

    def clean(self):
        data = super().clean()
        percent, amount = data.get("percent_off"), data.get("amount_off")
        if (percent is None) == (amount is None):
            raise ValidationError("A coupon takes either a percentage or a fixed amount off.")
        if percent is not None and not 0 < percent <= 100:
            self.add_error("percent_off", "Between 0 and 100.")
        if amount is not None:
            currency = (data.get("currency") or "").upper()
            if not currency:
                self.add_error("currency", "A fixed amount needs its currency.")
            else:
                data["currency"] = currency
                try:
                    if amount <= 0 or round_money(amount, currency) != amount:
                        self.add_error("amount_off", f"A positive amount in whole units of {currency}.")
                except ValueError as error:
                    self.add_error("currency", str(error))
        if data.get("duration") == Coupon.Duration.REPEATING and not data.get("duration_periods"):
            self.add_error("duration_periods", "How many periods?")
        for name in ("meters", "models_only"):
            value = data.get(name)
            if value is None:
                data[name] = []
            elif not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                self.add_error(name, 'A list of names, e.g. ["tts_characters"].')
        unknown = set(data.get("meters") or ()) - set(Meter.objects.values_list("code", flat=True))
        if unknown:
            self.add_error("meters", f"Unknown meter(s): {', '.join(sorted(unknown))}.")
        return data


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    form = CouponForm
    list_display = [
        "code",
        "name",
        "percent_off",
        "amount_off",
        "currency",
        "duration",
        "redeemed",
        "redeem_by",
    ]
    search_fields = ["code", "name"]

    @admin.display(description="applied to")
    def redeemed(self, coupon: Coupon) -> int:
        return coupon.redemptions.count()

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.redemptions.exists():  # invoices were priced with it: make a new one
            return [f for f in CouponForm.Meta.fields if f not in ("max_redemptions", "redeem_by")]
        return []

    def has_delete_permission(self, request, obj=None) -> bool:
        return obj is None or not obj.redemptions.exists()


class AppliedCouponForm(forms.ModelForm):
    class Meta:
        model = AppliedCoupon
        fields = ["tenant", "coupon", "starts_on"]

    def clean(self):
        data = super().clean()
        if self.errors or self.instance.pk:
            return data
        # the rules, checked now for a clear message; discounts.apply checks them again under the lock
        try:
            discounts.check(data["tenant"], data["coupon"])
        except discounts.CouponError as error:
            raise ValidationError(str(error)) from error
        return data


@admin.register(AppliedCoupon)
class AppliedCouponAdmin(admin.ModelAdmin):
    form = AppliedCouponForm
    list_display = ["tenant", "coupon", "starts_on", "created_by", "created_at"]
    search_fields = ["tenant__slug", "coupon__code"]
    list_filter = ["coupon"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "coupon", "starts_on"] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data
        try:
            made = discounts.apply(data["tenant"], data["coupon"], data["starts_on"], by=request.user)
        except discounts.CouponError as error:  # a limit reached by another admin since the form was checked
            messages.error(request, str(error))
            return
        obj.pk = made.pk
        refresh_tenant_drafts_after_commit(made.tenant_id)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # invoices were priced with it; a coupon ends by its duration
