"""The budget page: the monthly budget, its alert thresholds and destinations, and the alerts sent."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render

from portal.access import activate_tenant_timezone, tenant_view
from portal.forms import BudgetForm
from spend import budgets
from spend.models import Budget, BudgetAlert


@tenant_view()
def budget(request):
    activate_tenant_timezone(request)
    tenant = request.access.tenant
    current = Budget.objects.filter(tenant=tenant).first()
    if request.method == "POST":
        if not request.access.can_manage:
            raise PermissionDenied("Only owners and admins change the budget.")
        form = BudgetForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            budgets.save_budget(tenant, data["monthly_amount"], data["thresholds"], data["alert_email"])
            messages.success(request, "Budget saved.")
            return redirect("portal:budget")
    else:
        initial = {"thresholds": [50, 80, 100]}
        if current:
            initial = {
                "monthly_amount": current.monthly_amount,
                "thresholds": current.thresholds,
                "alert_email": current.alert_email,
            }
        form = BudgetForm(initial=initial)
    return render(
        request,
        "portal/budget.html",
        {
            "form": form,
            "budget": current,
            "status": budgets.budget_status(tenant),
            "alerts": BudgetAlert.objects.for_tenant(tenant)[:20],
        },
    )
