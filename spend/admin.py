"""Spend control in the admin (issue 15 part 9): each tenant's policy, balance alerts and auto-recharge, and
the pre-call holds (read only)."""

from django import forms
from django.contrib import admin
from django.utils import timezone

from billing import topups
from spend import control
from spend.models import Hold, SpendPolicy


class SpendPolicyForm(forms.ModelForm):
    class Meta:
        model = SpendPolicy
        fields = [
            "tenant",
            "policy",
            "overdraft",
            "low_balance_threshold",
            "auto_recharge_threshold",
            "auto_recharge_amount",
        ]

    def clean(self):
        data = super().clean()
        threshold, amount, tenant = (
            data.get("auto_recharge_threshold"),
            data.get("auto_recharge_amount"),
            data.get("tenant"),
        )
        if threshold is not None and amount is None:
            self.add_error("auto_recharge_amount", "An auto-recharge needs an amount.")
        elif amount is not None and tenant is not None:
            try:
                data["auto_recharge_amount"] = topups.check_amount(tenant, amount)
            except topups.TopUpError as error:
                self.add_error("auto_recharge_amount", str(error))
        for name in ("overdraft", "low_balance_threshold", "auto_recharge_threshold"):
            value = data.get(name)
            if value is not None and value < 0:
                self.add_error(name, "Must not be negative.")
        return data


@admin.register(SpendPolicy)
class SpendPolicyAdmin(admin.ModelAdmin):
    form = SpendPolicyForm
    list_display = [
        "tenant",
        "policy",
        "overdraft",
        "balance_state",
        "low_balance_threshold",
        "auto_recharge_threshold",
        "auto_recharge_amount",
        "updated_at",
    ]
    list_filter = ["policy", "balance_state"]
    search_fields = ["tenant__slug", "tenant__name"]
    fields = [*SpendPolicyForm.Meta.fields, "balance_state", "balance_checked_at"]
    readonly_fields = ["balance_state", "balance_checked_at", "balance_now"]

    def get_fields(self, request, obj=None):
        return [*self.fields, "balance_now"] if obj else self.fields

    @admin.display(description="balance now")
    def balance_now(self, policy: SpendPolicy) -> str:
        """The tenant's available balance as GET /api/v1/balance gives it (priced on opening this page)."""
        b = control.balance(policy.tenant)
        return (
            f"{b.available} {b.currency} available = {b.ledger_balance} credit − {b.unbilled_usage} not yet "
            f"invoiced − {b.held} held"
        )

    def save_model(self, request, obj, form, change) -> None:
        obj.updated_at = timezone.now()  # saving resumes an auto-recharge paused by a failed payment
        super().save_model(request, obj, form, change)


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
