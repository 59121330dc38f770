"""The credits page (issue 15, decision 018): the prepaid balance, buying credit through Stripe, balance alerts
and auto-recharge, the top-ups and the ledger."""

from __future__ import annotations

import secrets

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render

from billing import topups
from billing.models import LedgerEntry, TopUp
from payments import stripe_sync
from portal.access import activate_tenant_timezone, tenant_view
from portal.forms import BalanceAlertsForm, TopUpForm
from spend import control

LEDGER_ROWS = 50


@tenant_view()
def credits_page(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    policy = control.policy_of(tenant)
    buy = TopUpForm(tenant=tenant, initial={"request_key": secrets.token_urlsafe(24)})
    alerts = BalanceAlertsForm(
        tenant=tenant,
        initial={
            "low_balance_threshold": policy.low_balance_threshold,
            "auto_recharge_threshold": policy.auto_recharge_threshold,
            "auto_recharge_amount": policy.auto_recharge_amount,
        },
    )
    if request.method == "POST":
        if not request.access.can_manage:
            raise PermissionDenied("Only owners and admins buy credit or change its settings.")
        if request.POST.get("action") == "buy":
            buy = TopUpForm(request.POST, tenant=tenant)
            if not stripe_sync.is_configured():
                buy.add_error(
                    None, "Payments are not set up on this platform yet; ask your platform for credit."
                )
            elif buy.is_valid():
                topup = topups.request(
                    tenant,
                    buy.cleaned_data["amount"],
                    by=request.user,
                    request_key=buy.cleaned_data["request_key"],
                )
                messages.success(
                    request,
                    f"Top-up #{topup.pk} of {topup.amount} {topup.currency} asked for: your default card on file "
                    "is charged, or a payment link appears below. The credit is added once the payment arrives.",
                )
                return redirect("portal:credits")
        elif request.POST.get("action") == "alerts":
            alerts = BalanceAlertsForm(request.POST, tenant=tenant)
            if alerts.is_valid():
                control.save_alerts(tenant, **alerts.cleaned_data)
                messages.success(request, "Balance alerts and auto-recharge saved.")
                return redirect("portal:credits")
        else:
            messages.error(request, "Unknown action.")
            return redirect("portal:credits")
    status = 400 if request.method == "POST" else 200
    failed = topups.last_failed_recharge(tenant)
    return render(
        request,
        "portal/credits.html",
        {
            "balance": control.balance(tenant),
            "policy": policy,
            "buy": buy,
            "alerts": alerts,
            "payments_ready": stripe_sync.is_configured(),
            "paused": failed if failed and control.recharge_paused(tenant, policy) else None,
            "topups": TopUp.objects.for_tenant(tenant).select_related("requested_by")[:20],
            "ledger": LedgerEntry.objects.for_tenant(tenant)
            .select_related("grant", "invoice")
            .order_by("-created_at", "-id")[:LEDGER_ROWS],
        },
        status=status,
    )
