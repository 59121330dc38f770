"""The billing profile page (issue 16 part 4, decision 019): the tenant's legal name, address, country and tax
id, as its invoices will say them; managers edit it, everyone sees it. Issued invoices keep what they said."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.utils import timezone

from billing.admin.drafts import refresh_tenant_drafts_after_commit
from billing.models import BillingProfile
from portal.access import tenant_view
from portal.forms import BillingProfileForm

FIELDS = [
    "legal_name",
    "address_line1",
    "address_line2",
    "postal_code",
    "city",
    "region",
    "country",
    "tax_id",
    "is_business",
]


@tenant_view()
def billing_profile(request):
    tenant = request.access.tenant
    profile = BillingProfile.objects.filter(tenant=tenant).first()
    status = 200
    if request.method == "POST":
        if not request.access.can_manage:
            raise PermissionDenied("Only owners and admins change the billing profile.")
        form = BillingProfileForm(request.POST)
        if form.is_valid():
            BillingProfile.objects.update_or_create(
                tenant=tenant, defaults={**form.cleaned_data, "updated_at": timezone.now()}
            )
            refresh_tenant_drafts_after_commit(tenant.pk)  # the draft's tax follows the profile
            messages.success(request, "Billing profile saved. Invoices issued before keep what they said.")
            return redirect("portal:billing-profile")
        status = 400
    else:
        initial = {name: getattr(profile, name) for name in FIELDS} if profile else {"is_business": True}
        form = BillingProfileForm(initial=initial)
    return render(request, "portal/billing_profile.html", {"form": form, "profile": profile}, status=status)
