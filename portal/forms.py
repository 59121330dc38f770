from __future__ import annotations

import html
from datetime import date, timedelta
from decimal import Decimal

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.core.validators import MaxValueValidator, MinValueValidator
from django.utils import timezone
from django.utils.safestring import mark_safe

from billing import periods
from notifications import webhooks
from tenants.models import Agent, Membership
from usage.models import Meter

# Far enough for any rotation policy, near enough that the date stays representable in every time zone.
KEY_MAX_LIFETIME = timedelta(days=3653)

GROUP_CHOICES = [
    ("meter", "Meter"),
    ("model", "Model"),
    ("agent", "Agent"),
    ("session", "Session"),
    ("day", "Day"),
]


class PlainSelect(forms.Select):
    """A ``<select>`` written directly: Django's template-rendered widget spent most of the usage page's form
    time on its options. Same markup for a single choice; labels and values are escaped."""

    def render(self, name, value, attrs=None, renderer=None):
        attrs = {"name": name, **self.build_attrs(self.attrs, attrs)}
        chosen = {str(v) for v in self.format_value(value)}
        options = "".join(
            f'<option value="{html.escape(str(key))}"{" selected" if str(key) in chosen else ""}>'
            f"{html.escape(str(label))}</option>"
            for key, label in self.choices
        )
        attributes = "".join(f' {k}="{html.escape(str(v))}"' for k, v in attrs.items() if v is not False)
        return mark_safe(f"<select{attributes}>{options}</select>")  # noqa: S308 - escaped above


# Days far enough from the ends of the calendar that a day or a month later is still a date.
_QUERYABLE_DAY = [
    MinValueValidator(periods.FIRST_QUERY_DAY),
    MaxValueValidator(periods.LAST_QUERY_DAY),
]


class UsageFilterForm(forms.Form):
    start = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), validators=_QUERYABLE_DAY
    )
    end = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="inclusive",
        validators=_QUERYABLE_DAY,
    )
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.none(), required=False, empty_label="All agents", widget=PlainSelect
    )
    meter = forms.ModelChoiceField(
        queryset=Meter.objects.all(),
        required=False,
        to_field_name="code",
        empty_label="All meters",
        widget=PlainSelect,
    )
    provider = forms.CharField(required=False, max_length=128)
    model = forms.CharField(required=False, max_length=128)
    session = forms.CharField(required=False, max_length=128)
    group_by = forms.ChoiceField(choices=GROUP_CHOICES, required=False, initial="meter", widget=PlainSelect)

    def __init__(self, *args, tenant, default_start: date, default_end: date, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = Agent.objects.for_tenant(tenant)
        self.default_start, self.default_end = default_start, default_end

    def clean(self):
        data = super().clean()
        start = data.get("start") or self.default_start
        end = data.get("end") or self.default_end - timedelta(days=1)
        if end < start:
            self.add_error("end", "The end date is before the start date.")
        elif (end - start).days > 400:
            self.add_error("end", "Choose at most 400 days.")
        data["start"], data["end_exclusive"] = start, end + timedelta(days=1)
        data["group_by"] = data.get("group_by") or "meter"
        return data

    def filters(self) -> dict:
        data = self.cleaned_data
        found = {
            "agent": data["agent"].pk if data.get("agent") else None,
            "meter": data["meter"].code if data.get("meter") else None,
            "provider": data.get("provider") or None,
            "model": data.get("model") or None,
            "session": data.get("session") or None,
        }
        return {k: v for k, v in found.items() if v is not None}


class ApiKeyForm(forms.Form):
    agent = forms.ModelChoiceField(queryset=Agent.objects.none())
    label = forms.CharField(max_length=100, required=False)
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="In the tenant's time zone; empty: never.",
    )

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = Agent.objects.for_tenant(tenant).filter(status=Agent.Status.ACTIVE)

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is None:
            return None
        now = timezone.now()
        if expires_at <= now:
            raise forms.ValidationError("The expiry must be in the future.")
        if expires_at > now + KEY_MAX_LIFETIME:
            raise forms.ValidationError("Choose an expiry within 10 years, or none.")
        return expires_at


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = ["name"]

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.tenant = tenant


class InvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.VIEWER)

    def __init__(self, *args, allowed_roles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [c for c in Membership.Role.choices if c[0] in allowed_roles]

    def clean_email(self):
        return self.cleaned_data["email"].strip().lower()


class InvitationSignupForm(UserCreationForm):
    """A new account for an invited address: the address comes from the invitation and is not editable."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "first_name", "last_name")

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.email = email  # also lets the password validators refuse one resembling the address
        self.fields["first_name"].required = True


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class BudgetForm(forms.Form):
    monthly_amount = forms.DecimalField(min_value=Decimal("0.01"), max_digits=14, decimal_places=2)
    thresholds = forms.MultipleChoiceField(
        choices=[(50, "50 %"), (80, "80 %"), (100, "100 %")],
        widget=forms.CheckboxSelectMultiple,
        initial=[50, 80, 100],
    )
    alert_email = forms.EmailField(required=False, help_text="Empty: the tenant's billing e-mail.")

    def clean_thresholds(self):
        return sorted(int(t) for t in self.cleaned_data["thresholds"])


class WebhookEndpointForm(forms.Form):
    url = forms.URLField(max_length=2000, assume_scheme="https", label="URL")
    description = forms.CharField(max_length=200, required=False)
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in webhooks.EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: every type, including those added later.",
    )

    def clean_url(self):
        """Refuse at once what can never be delivered to (http outside development, another port, a private
        address written as the host); a name is resolved and checked again on every delivery."""
        url = self.cleaned_data["url"]
        if problem := webhooks.url_problem(url):
            raise forms.ValidationError(f"Meterline cannot deliver to this URL: {problem}.")
        return url


class TopUpForm(forms.Form):
    """Buy prepaid credit: the amount, and the page's one-time key (a double submit buys once)."""

    amount = forms.DecimalField(max_digits=14, decimal_places=3, help_text="In your plan's currency.")
    request_key = forms.CharField(max_length=64, widget=forms.HiddenInput)

    def __init__(self, *args, tenant=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def clean_amount(self):
        from billing import topups

        try:
            return topups.check_amount(self.tenant, self.cleaned_data["amount"])
        except topups.TopUpError as error:
            raise forms.ValidationError(str(error)) from None


class BalanceAlertsForm(forms.Form):
    """A prepaid tenant's own settings: when to warn, and when and how much to recharge automatically."""

    low_balance_threshold = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=14,
        decimal_places=2,
        help_text="Send balance.low when the available balance falls below this. Empty: never.",
    )
    auto_recharge_threshold = forms.DecimalField(
        required=False,
        min_value=Decimal("0.00"),
        max_digits=14,
        decimal_places=2,
        help_text="Buy credit when the available balance falls below this. Empty: no auto-recharge.",
    )
    auto_recharge_amount = forms.DecimalField(
        required=False, max_digits=14, decimal_places=3, help_text="How much each auto-recharge buys."
    )

    def __init__(self, *args, tenant=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def clean(self):
        from billing import topups

        data = super().clean()
        threshold, amount = data.get("auto_recharge_threshold"), data.get("auto_recharge_amount")
        if threshold is not None and amount is None:
            self.add_error("auto_recharge_amount", "An auto-recharge needs an amount.")
        elif amount is not None:
            try:
                data["auto_recharge_amount"] = topups.check_amount(self.tenant, amount)
            except topups.TopUpError as error:
                self.add_error("auto_recharge_amount", str(error))
            if threshold is None and "auto_recharge_amount" not in self.errors:
                data["auto_recharge_amount"] = None  # no threshold: no auto-recharge, the amount is not kept
        return data


class BillingProfileForm(forms.Form):
    """The tenant's own billing profile: what its invoices say about it, and where it is taxed."""

    legal_name = forms.CharField(max_length=200)
    address_line1 = forms.CharField(max_length=200, label="Address")
    address_line2 = forms.CharField(max_length=200, required=False, label="Address (line 2)")
    postal_code = forms.CharField(max_length=32, required=False)
    city = forms.CharField(max_length=100)
    region = forms.CharField(max_length=100, required=False, help_text="State or province.")
    country = forms.CharField(max_length=2, min_length=2, help_text="Two letters, e.g. DE.")
    tax_id = forms.CharField(
        max_length=32, required=False, label="Tax id", help_text="VAT number, e.g. DE136695976."
    )
    is_business = forms.BooleanField(required=False, initial=True, label="We buy as a business")

    def clean_country(self):
        country = self.cleaned_data["country"].strip().upper()
        if not country.isalpha():
            raise forms.ValidationError("Two letters, ISO 3166-1 alpha-2 (e.g. DE).")
        return country

    def clean(self):
        from billing import taxes

        data = super().clean()
        if data.get("tax_id") and data.get("country"):
            try:
                data["tax_id"] = taxes.check_tax_id(data["country"], data["tax_id"])
            except taxes.TaxIdError as error:
                self.add_error("tax_id", str(error))
        return data
