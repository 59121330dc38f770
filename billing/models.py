"""Billing tables: versioned price plans, provider rates, subscriptions, invoices and their lines, and the
Stripe sync state of invoices (payments keeps the Stripe webhook events).

Invariants the database holds: one invoice per tenant and period, one line per group of an invoice, gapless
numbers (a counter row per series and year, taken under a row lock), finalized invoices and lines that never
change (a trigger refuses it; see migration 0002), and credit notes that never change once issued nor credit
more than a line or an invoice billed (triggers; see migration 0016).
"""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.money import format_quantity, plain_decimal
from billing.pricing import PriceModel
from tenants.models import Tenant, TenantRow, TenantScopedQuerySet

MONEY = {"max_digits": 18, "decimal_places": 4}  # rounded amounts: at most 3 minor-unit decimals (KWD)
RATE = {"max_digits": 28, "decimal_places": 12}  # unit prices, e.g. $0.075 per 1M tokens
QUANTITY = {"max_digits": 30, "decimal_places": 6}
# An invoice is due this long after it is issued (finalized); the Stripe copy is sent with the same terms.
PAYMENT_TERMS = timedelta(days=30)


class PricePlan(models.Model):
    """A named plan; what it charges lives in its versions."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    currency = models.CharField(max_length=3, default="USD")
    description = models.TextField(blank=True)
    expected_cost_per_minute = models.DecimalField(
        **RATE,
        null=True,
        blank=True,
        help_text="What a minute of a call costs, for pre-call holds asked by duration when the tenant has no "
        "recent calls to go by (decision 018).",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.currency})"

    def version_on(self, day: date) -> PlanVersion | None:
        return self.versions.filter(effective_from__lte=day).order_by("-effective_from").first()


class PlanVersion(models.Model):
    """What a plan charges from ``effective_from`` on. Locked (read-only) once a finalized invoice used it;
    changing prices then means a new version from a date."""

    plan = models.ForeignKey(PricePlan, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    effective_from = models.DateField()
    base_fee = models.DecimalField(**MONEY, default=0)
    fee_per_active_agent = models.DecimalField(
        **MONEY, default=0, help_text="Charged per agent that reported usage in the period."
    )
    is_locked = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["plan", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "version"], name="planversion_unique_number"),
            models.UniqueConstraint(fields=["plan", "effective_from"], name="planversion_unique_start"),
            models.CheckConstraint(
                condition=Q(base_fee__gte=0, fee_per_active_agent__gte=0),
                name="planversion_fees_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan.name} v{self.version} (from {self.effective_from})"


class Price(models.Model):
    version = models.ForeignKey(PlanVersion, on_delete=models.CASCADE, related_name="prices")
    meter = models.ForeignKey(
        "usage.Meter", on_delete=models.PROTECT, to_field="code", db_column="meter_code"
    )
    provider = models.CharField(max_length=128, blank=True, help_text="Empty: any provider.")
    model_pattern = models.CharField(
        max_length=128, blank=True, help_text="Glob such as gpt-4o-mini*; empty: any model."
    )
    price_model = models.CharField(
        max_length=16, choices=[(m.value, m.value) for m in PriceModel], default=PriceModel.PER_UNIT
    )
    unit_amount = models.DecimalField(
        **RATE, default=0, help_text="Per unit_size units (per_unit; tier unit)."
    )
    unit_size = models.DecimalField(**QUANTITY, default=1)
    package_size = models.DecimalField(**QUANTITY, default=1)
    package_amount = models.DecimalField(**RATE, default=0)
    markup = models.DecimalField(
        max_digits=10, decimal_places=6, default=0, help_text="cost_plus: 0.25 = +25 %."
    )
    free_allowance = models.DecimalField(**QUANTITY, default=0, help_text="Free quantity per period.")
    minimum_charge = models.DecimalField(
        **MONEY, default=0, help_text="Per period, when the price matched usage."
    )

    class Meta:
        ordering = ["meter_id", "provider", "model_pattern"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "meter", "provider", "model_pattern"], name="price_unique_scope"
            ),
            models.CheckConstraint(
                condition=Q(
                    unit_amount__gte=0,
                    package_amount__gte=0,
                    markup__gte=0,
                    free_allowance__gte=0,
                    minimum_charge__gte=0,
                    unit_size__gt=0,
                    package_size__gt=0,
                ),
                name="price_amounts_valid",
            ),
        ]

    def __str__(self) -> str:
        scope = "/".join(x for x in (self.provider, self.model_pattern) if x) or "any"
        return f"{self.meter_id} [{scope}] {self.price_model}"


class PriceTier(models.Model):
    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="tiers")
    up_to = models.DecimalField(
        **QUANTITY, null=True, blank=True, help_text="Empty: no upper bound (last tier)."
    )
    unit_amount = models.DecimalField(**RATE, default=0)
    flat_amount = models.DecimalField(**MONEY, default=0)

    class Meta:
        ordering = ["price", models.F("up_to").asc(nulls_last=True)]
        constraints = [
            models.UniqueConstraint(
                fields=["price", "up_to"], name="pricetier_unique_bound", nulls_distinct=False
            )
        ]

    def __str__(self) -> str:
        bound = "∞" if self.up_to is None else format_quantity(self.up_to)
        flat = f" + {plain_decimal(self.flat_amount)} flat" if self.flat_amount else ""
        return f"up to {bound}: {plain_decimal(self.unit_amount)}{flat}"


class ProviderRate(models.Model):
    """A provider's list cost (the platform's own cost): used by cost_plus prices and for margins.

    ``origin`` tells rates typed in by staff from those ``manage.py import_provider_rates`` loaded from the
    public price list (billing.catalogue); an import never overwrites or shadows a manual rate."""

    class Origin(models.TextChoices):
        MANUAL = "manual", "typed in by staff"
        CATALOGUE = "catalogue", "imported from the public price list"

    provider = models.CharField(max_length=128)
    model_pattern = models.CharField(max_length=128, blank=True)
    meter = models.ForeignKey(
        "usage.Meter", on_delete=models.PROTECT, to_field="code", db_column="meter_code"
    )
    cost_per_unit = models.DecimalField(**RATE)
    unit_size = models.DecimalField(**QUANTITY, default=1)
    currency = models.CharField(max_length=3, default="USD")
    effective_from = models.DateField()
    source = models.CharField(
        max_length=300, blank=True, help_text="Where the figure comes from (URL, date)."
    )
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.MANUAL)

    class Meta:
        ordering = ["provider", "model_pattern", "meter_id", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model_pattern", "meter", "currency", "effective_from"],
                name="providerrate_unique",
            ),
            models.CheckConstraint(
                condition=Q(cost_per_unit__gte=0, unit_size__gt=0), name="providerrate_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.model_pattern or '*'} {self.meter_id} from {self.effective_from}"


class Subscription(TenantRow):
    """A tenant is on one plan at a time; a change starts on a date and splits that period. The admin checks a
    tenant's subscriptions together, as one set (``billing.admin.subscriptions``)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(PricePlan, on_delete=models.PROTECT, related_name="subscriptions")
    starts_on = models.DateField()
    ends_on = models.DateField(null=True, blank=True, help_text="Exclusive; empty while current.")

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "starts_on"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "starts_on"], name="subscription_unique_start"),
            models.CheckConstraint(
                condition=Q(ends_on__isnull=True) | Q(ends_on__gt=models.F("starts_on")),
                name="subscription_positive_length",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} on {self.plan} from {self.starts_on}"


class InvoiceQuerySet(TenantScopedQuerySet):
    def finalized(self):
        return self.exclude(status=Invoice.Status.DRAFT)


class Invoice(TenantRow):
    class Status(models.TextChoices):
        DRAFT = "draft"
        OPEN = "open"
        PAID = "paid"
        VOID = "void"
        UNCOLLECTIBLE = "uncollectible"

    class SyncState(models.TextChoices):
        NOT_SYNCED = "not_synced"
        PENDING = "pending"
        SYNCED = "synced"
        FAILED = "failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period_start = models.DateField(help_text="First day of the billing period (tenant-local).")
    period_end = models.DateField(help_text="First day after the period (exclusive).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # NULL on drafts, so the unique (tenant, number) leaves them out
    number = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    currency = models.CharField(max_length=3)
    total = models.DecimalField(**MONEY, default=0)
    platform_cost = models.DecimalField(**MONEY, default=0)
    unmatched = models.JSONField(
        default=list, blank=True, help_text="Usage no price matched (never billed silently)."
    )
    generated_at = models.DateTimeField(null=True, blank=True)
    parties = models.JSONField(
        default=dict,
        blank=True,
        help_text="Seller and buyer as they stood at finalization (name, address, tax id): what the invoice says.",
    )
    finalized_at = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    stripe_tax_calculation_id = models.CharField(
        max_length=255,
        blank=True,
        help_text="The Stripe Tax calculation its tax line carries (decision 019); empty under staff-defined rates.",
    )
    finalization_error = models.TextField(
        blank=True, help_text="Why the last attempt to finalize it failed (Stripe Tax), until one succeeds."
    )
    # The copy on Stripe (DESIGN §7). Not guarded by the immutability trigger: these columns follow Stripe
    # after finalization, while the invoice's own amounts never change.
    stripe_invoice_id = models.CharField(max_length=255, blank=True)
    sync_state = models.CharField(max_length=16, choices=SyncState.choices, default=SyncState.NOT_SYNCED)
    sync_error = models.TextField(blank=True, help_text="The last error of the Stripe sync, if any.")
    sync_attempted_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    stripe_status = models.CharField(
        max_length=16,
        blank=True,
        help_text="The Stripe invoice's status as last seen (webhook or reconcile).",
    )
    hosted_invoice_url = models.URLField(
        max_length=2048, blank=True, help_text="Stripe's page where the tenant pays this invoice."
    )

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start", "tenant"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period_start"], name="invoice_one_per_tenant_period"),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")), name="invoice_period_positive"
            ),
            models.CheckConstraint(
                condition=Q(status="draft", number__isnull=True)
                | (~Q(status="draft") & Q(number__isnull=False)),
                name="invoice_number_iff_finalized",
            ),
            # numbers and Stripe's ids are unique across tenants by construction (one counter row hands out
            # each number; Stripe issues each id once); the database holds them unique per tenant, which is what
            # a table sharded by tenant can enforce (decision 024)
            models.UniqueConstraint(fields=["tenant", "number"], name="invoice_unique_number"),
            models.UniqueConstraint(
                fields=["tenant", "stripe_invoice_id"],
                condition=~Q(stripe_invoice_id=""),
                name="invoice_unique_stripe_invoice",
            ),
            # the target of the credit ledger's (tenant, invoice) foreign key: an entry can only name an
            # invoice of its own tenant (migration 0009)
            models.UniqueConstraint(fields=["tenant", "id"], name="invoice_tenant_id"),
        ]
        indexes = [
            # Stripe's webhooks name an invoice by its Stripe id alone, before its tenant is known
            models.Index(
                fields=["stripe_invoice_id"],
                condition=~Q(stripe_invoice_id=""),
                name="invoice_stripe_invoice",
            ),
            # tasks (finalize, sync to Stripe) find an invoice by id alone, and the primary key is (tenant_id, id)
            # (decision 024)
            models.Index(fields=["id"], name="invoice_id_lookup"),
        ]

    def __str__(self) -> str:
        return self.number or f"draft {self.tenant.slug} {self.period_start:%Y-%m}"

    @property
    def is_finalized(self) -> bool:
        return self.status != self.Status.DRAFT

    @property
    def issued_on(self) -> date | None:
        """The tenant-local day it was finalized; None for a draft."""
        if self.finalized_at is None:
            return None
        return self.finalized_at.astimezone(ZoneInfo(self.tenant.timezone)).date()

    @property
    def due_on(self) -> date | None:
        return self.issued_on + PAYMENT_TERMS if self.issued_on else None

    @property
    def last_day(self) -> date:
        """The period's last day (``period_end`` is the first day after it)."""
        return self.period_end - timedelta(days=1)

    @property
    def payment_url(self) -> str:
        """Where the tenant can pay it now: Stripe's hosted page while it is open, else ""."""
        if self.status == self.Status.OPEN and self.hosted_invoice_url.startswith("https://"):
            return self.hosted_invoice_url
        return ""


class InvoiceLine(TenantRow):
    class Kind(models.TextChoices):
        BASE_FEE = "base_fee"
        AGENT_FEE = "agent_fee"
        USAGE = "usage"
        MINIMUM = "minimum"
        ADJUSTMENT = "adjustment"
        DISCOUNT = "discount"  # negative: a coupon, before tax (decision 019)
        TAX = "tax"  # on the discounted amount, once per rate (decision 019)
        CREDITS_APPLIED = "credits_applied"  # negative: prepaid credit paid this much (decision 018)

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines", db_constraint=False)
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    meter = models.CharField(max_length=64, blank=True)
    provider = models.CharField(max_length=128, blank=True)
    model = models.CharField(max_length=128, blank=True)
    plan_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    segment_start = models.DateField(
        help_text="The part of the period this line prices (plan changes split it)."
    )
    segment_end = models.DateField()
    adjusted_period_start = models.DateField(
        null=True, blank=True, help_text="Adjustment lines: the period it corrects."
    )
    adjusts_kind = models.CharField(
        max_length=16, blank=True, help_text="Adjustment lines: the kind of line corrected."
    )
    code = models.CharField(max_length=64, blank=True, help_text="Discount lines: the coupon's code.")
    quantity = models.DecimalField(**QUANTITY, default=0)
    allowance = models.DecimalField(**QUANTITY, default=0)
    billable_quantity = models.DecimalField(**QUANTITY, default=0)
    unit_price = models.DecimalField(**RATE, null=True, blank=True)
    unit_size = models.DecimalField(**QUANTITY, default=1)
    amount = models.DecimalField(**MONEY)
    unrounded_amount = models.DecimalField(max_digits=40, decimal_places=20)
    platform_cost = models.DecimalField(**MONEY, null=True, blank=True)
    price_snapshot = models.JSONField(
        default=dict, blank=True, help_text="The price as it was when this line was priced."
    )

    class Meta:
        ordering = [
            "invoice_id",
            "position",
        ]  # by the column: "invoice" would join invoices for their own order
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "invoice",
                    "kind",
                    "adjusts_kind",
                    "meter",
                    "provider",
                    "model",
                    "segment_start",
                    "adjusted_period_start",
                    "code",
                ],
                name="invoiceline_one_per_group_and_code",
                nulls_distinct=False,
            ),
            models.UniqueConstraint(
                fields=["tenant", "invoice", "position"], name="invoiceline_unique_position"
            ),
        ]

    def __str__(self) -> str:
        return self.description


class InvoiceNumberSequence(models.Model):
    """The last number given per series and year, taken under a row lock so numbers are gapless: invoices
    (``ML-2026-000123``) and credit notes (``CN-2026-000007``) each count in their own series."""

    series = models.CharField(max_length=8, default="ML")
    year = models.PositiveIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "year"], name="numbersequence_one_per_series_year")
        ]

    def __str__(self) -> str:
        return f"{self.series}-{self.year}: {self.last_number}"


class PlanAuditEntry(models.Model):
    """Who changed what in a price plan, and when (admin edits of plans, versions, prices and tiers)."""

    plan = models.ForeignKey(PricePlan, on_delete=models.CASCADE, related_name="audit_entries")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    at = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=32)
    object_repr = models.CharField(max_length=300)
    changes = models.JSONField(default=dict, help_text="field → [before, after]")

    class Meta:
        ordering = ["-at"]
        verbose_name_plural = "plan audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.user} {self.action} {self.object_repr}"


PRECISE = {"max_digits": 44, "decimal_places": 20}  # per-call costs at full precision (decision 017)


class CallCost(TenantRow):
    """A conversation's usage and its per-call cost per (billing period, meter, provider, model): each quantity
    priced when it was received, at the marginal rate then in force (billing.call_costs, decision 017). Written
    by the ingest transaction that stored the usage and never by a later one, except ``manage.py
    rebuild_call_costs``; so a call's cost does not move when other usage arrives. Usage outside any session is
    kept under the session id ""."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    session_id = models.CharField(max_length=128, blank=True, default="")
    period_start = models.DateField()
    meter = models.CharField(max_length=64)
    provider = models.CharField(max_length=128, blank=True, default="")
    model = models.CharField(max_length=128, blank=True, default="")
    quantity = models.DecimalField(**QUANTITY)
    cost = models.DecimalField(**PRECISE)
    # The part of ``quantity`` no price matched when it arrived (priced at nothing, shown as unpriced).
    unpriced_quantity = models.DecimalField(**QUANTITY, default=0)
    # What the providers charge the platform for ``quantity`` minus ``uncosted_quantity`` (no provider rate).
    provider_cost = models.DecimalField(**PRECISE, default=0)
    uncosted_quantity = models.DecimalField(**QUANTITY, default=0)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "session_id", "period_start", "meter", "provider", "model"],
                name="callcost_unique_group",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "period_start"], name="callcost_tenant_period")]

    def __str__(self) -> str:
        return f"{self.session_id or '(no session)'} {self.meter} {self.cost}"


class TierPosition(TenantRow):
    """How much usage a tiered price has pooled so far in a period, in receipt order: where the next quantity
    it prices falls among its tiers. Taken under a row lock by each ingest transaction (billing.call_costs)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    period_start = models.DateField()
    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="+")
    quantity = models.DecimalField(**QUANTITY)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period_start", "price"], name="tierposition_unique")
        ]

    def __str__(self) -> str:
        return f"{self.price_id} @ {self.quantity}"


class TieredCharge(TenantRow):
    """What one event's quantities priced by a tiered price were charged when they arrived, per meter: such a
    charge depends on the tier position the period had reached then, which nothing else keeps, and a correction
    takes out exactly that charge (billing.call_costs, decision 021). Kept while the event can still be corrected
    (35 days, usage.validation.MAX_PAST), then pruned daily."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    event_id = models.CharField(max_length=128)
    timestamp = models.DateTimeField(help_text="The event's.")
    charges = models.JSONField(help_text="meter code → cost (a decimal string, 20 places)")

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "event_id"], name="tieredcharge_unique_event")
        ]
        indexes = [models.Index(fields=["timestamp"], name="tieredcharge_time")]

    def __str__(self) -> str:
        return self.event_id


class Coupon(models.Model):
    """A discount made by staff (issue 16 part 3, decision 019): a percentage, or a fixed amount in one currency;
    for one period, N periods or every period from when it is applied to a tenant; optionally only on some
    meters or models; with an optional redemption limit and a last day it can be applied."""

    class Duration(models.TextChoices):
        ONCE = "once"
        REPEATING = "repeating", "for N periods"
        FOREVER = "forever"

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200, help_text="Shown on invoices.")
    percent_off = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    amount_off = models.DecimalField(**MONEY, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True, help_text="Of amount_off.")
    duration = models.CharField(max_length=16, choices=Duration.choices, default=Duration.ONCE)
    duration_periods = models.PositiveSmallIntegerField(null=True, blank=True, help_text="For N periods: N.")
    meters = models.JSONField(default=list, blank=True, help_text="Only these meters (empty: every line).")
    models_only = models.JSONField(default=list, blank=True, help_text="Only these models (empty: any).")
    max_redemptions = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tenants it may be applied to."
    )
    redeem_by = models.DateTimeField(null=True, blank=True, help_text="It cannot be applied after this.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(percent_off__isnull=False) & Q(amount_off__isnull=True))
                | (Q(percent_off__isnull=True) & Q(amount_off__isnull=False) & ~Q(currency="")),
                name="coupon_percent_or_amount_in_a_currency",
            ),
            models.CheckConstraint(
                condition=Q(percent_off__isnull=True) | (Q(percent_off__gt=0) & Q(percent_off__lte=100)),
                name="coupon_percent_between_0_and_100",
            ),
            models.CheckConstraint(
                condition=Q(amount_off__isnull=True) | Q(amount_off__gt=0), name="coupon_amount_positive"
            ),
            models.CheckConstraint(
                condition=~Q(duration="repeating") | Q(duration_periods__gt=0),
                name="coupon_repeating_has_periods",
            ),
        ]

    def __str__(self) -> str:
        off = (
            f"{self.percent_off} %" if self.percent_off is not None else f"{self.amount_off} {self.currency}"
        )
        return f"{self.name} ({off} off, {self.get_duration_display()})"


class AppliedCoupon(TenantRow):
    """A coupon applied to a tenant's subscription from a period on (the admin); each row is one redemption."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="coupons")
    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="redemptions")
    starts_on = models.DateField(help_text="The first period it discounts (the 1st of a month).")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["starts_on", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "coupon"], name="appliedcoupon_once_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.coupon.code} for {self.tenant} from {self.starts_on:%Y-%m}"


class BillingProfile(TenantRow):
    """Who the tenant is, as its invoices must say (issue 16 part 4): legal name, address, country, tax id. The
    tax id is checked with python-stdnum when saved (billing.taxes); only a valid one gives reverse charge."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_profile")
    legal_name = models.CharField(max_length=200)
    address_line1 = models.CharField(max_length=200)
    address_line2 = models.CharField(max_length=200, blank=True)
    postal_code = models.CharField(max_length=32, blank=True)
    city = models.CharField(max_length=100)
    region = models.CharField(
        max_length=100, blank=True, help_text="State or province, where tax depends on it."
    )
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2, e.g. DE.")
    tax_id = models.CharField(max_length=32, blank=True, help_text="VAT or other tax number, compact form.")
    is_business = models.BooleanField(default=True)
    updated_at = models.DateTimeField(default=timezone.now)
    stripe_tax_percent = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="The effective rate of the last Stripe Tax calculation for the tenant: drafts estimate with it.",
    )

    def __str__(self) -> str:
        return f"{self.legal_name} ({self.country})"


class TaxRate(models.Model):
    """A tax rate staff define per country (and region): exclusive (added to prices) or inclusive (in them),
    in force from a date (and until one)."""

    name = models.CharField(max_length=100, help_text='Shown on invoices, e.g. "VAT".')
    country = models.CharField(max_length=2)
    region = models.CharField(max_length=100, blank=True, help_text="Empty: the whole country.")
    percent = models.DecimalField(max_digits=6, decimal_places=3)
    inclusive = models.BooleanField(default=False)
    effective_from = models.DateField()
    effective_to = models.DateField(null=True, blank=True, help_text="The first day it no longer applies.")

    class Meta:
        ordering = ["country", "region", "-effective_from"]
        constraints = [
            models.CheckConstraint(
                condition=Q(percent__gte=0) & Q(percent__lt=100), name="taxrate_percent_range"
            ),
            models.CheckConstraint(
                condition=Q(effective_to__isnull=True) | Q(effective_to__gt=models.F("effective_from")),
                name="taxrate_ends_after_it_starts",
            ),
        ]

    def __str__(self) -> str:
        where = f"{self.country}-{self.region}" if self.region else self.country
        return f"{self.name} {self.percent} % {where} from {self.effective_from}"


class TopUp(TenantRow):
    """Prepaid credit bought through Stripe (issue 15 part 5, decision 018): a one-off Stripe invoice for the
    amount, charged to the customer's default payment method or paid on Stripe's hosted page; the credit is
    granted when Stripe says it is paid, exactly once (``CreditGrant.topup`` is unique). ``automatic``: an
    auto-recharge; the database holds at most one in flight per tenant."""

    class Status(models.TextChoices):
        PENDING = "pending", "requested"  # not at Stripe yet
        OPEN = "open", "awaiting payment"  # Stripe invoice finalized, not paid yet
        PAID = "paid", "paid and credited"
        FAILED = "failed", "payment failed"
        CANCELED = "canceled", "canceled"

    IN_FLIGHT = (Status.PENDING, Status.OPEN)

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="topups")
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(**MONEY)
    automatic = models.BooleanField(default=False, help_text="An auto-recharge, not a manager's purchase.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    request_key = models.CharField(
        max_length=64, blank=True, help_text="The form's one-time key: a double submit buys once."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    stripe_invoice_id = models.CharField(max_length=255, blank=True)
    hosted_invoice_url = models.URLField(max_length=2048, blank=True)
    failure_message = models.CharField(max_length=500, blank=True)
    attempted_at = models.DateTimeField(null=True, blank=True, help_text="Last push to Stripe.")
    settled_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was paid, failed or canceled."
    )

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="topup_amount_positive"),
            models.UniqueConstraint(fields=["tenant", "id"], name="topup_tenant_id"),
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(automatic=True, status__in=["pending", "open"]),
                name="topup_one_auto_recharge_in_flight",
            ),
            models.UniqueConstraint(
                fields=["tenant", "request_key"], condition=~Q(request_key=""), name="topup_request_once"
            ),
        ]

    def __str__(self) -> str:
        kind = "auto-recharge" if self.automatic else "top-up"
        return f"{kind} {self.amount} {self.currency} for {self.tenant} ({self.get_status_display()})"


class CreditGrant(TenantRow):
    """Prepaid credit given to a tenant (DESIGN §13, decision 018): bought, promotional, goodwill or a refund.
    What it is worth now is the sum of its ledger entries; consumption takes the highest ``priority`` first,
    then the soonest ``expires_at`` (no expiry last), then the oldest."""

    class Source(models.TextChoices):
        PURCHASED = "purchased"
        PROMOTIONAL = "promotional"
        GOODWILL = "goodwill"
        REFUND = "refund"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="credit_grants")
    currency = models.CharField(max_length=3)
    source = models.CharField(max_length=16, choices=Source.choices)
    amount = models.DecimalField(**MONEY)
    priority = models.SmallIntegerField(default=0, help_text="Higher is used first.")
    effective_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    topup = models.OneToOneField(
        TopUp,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="grant",
        db_constraint=False,
        help_text="The paid top-up this credit was bought with (one grant per top-up).",
    )
    credit_note = models.OneToOneField(
        "CreditNote",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="grant",
        db_constraint=False,
        help_text="The credit note whose outcome this credit is (one grant per credit note).",
    )

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="creditgrant_amount_positive"),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("effective_at")),
                name="creditgrant_expires_after_effective",
            ),
            models.UniqueConstraint(fields=["tenant", "id"], name="creditgrant_tenant_id"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.amount} {self.currency} for {self.tenant}"


class LedgerEntry(TenantRow):
    """One append-only movement of a grant's value; a tenant's ledger balance is their sum (decision 018).

    The database holds: a grant is posted once; a grant pays a given invoice at most once; an entry names only
    a grant and an invoice of its own tenant ((tenant, grant) and (tenant, invoice) foreign keys, migration
    0009); and no entry is ever changed or deleted (a trigger)."""

    class Kind(models.TextChoices):
        GRANT = "grant"  # +: the grant's amount, when it takes effect
        APPLICATION = "application"  # −: paid (part of) an invoice
        EXPIRY = "expiry"  # −: what was left when it expired
        REVERSAL = "reversal"  # −: taken back by staff, with a reason
        ADJUSTMENT = "adjustment"  # ±: corrected by staff, with a reason

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    grant = models.ForeignKey(
        CreditGrant, on_delete=models.PROTECT, related_name="entries", db_constraint=False
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.DecimalField(**MONEY)
    invoice = models.ForeignKey(
        "Invoice", on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_constraint=False
    )
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "grant"], condition=Q(kind="grant"), name="ledger_grant_posted_once"
            ),
            models.UniqueConstraint(
                fields=["tenant", "grant", "invoice"],
                condition=Q(kind="application"),
                name="ledger_grant_pays_invoice_once",
            ),
            models.UniqueConstraint(
                fields=["tenant", "grant"], condition=Q(kind="expiry"), name="ledger_grant_expires_once"
            ),
            models.CheckConstraint(
                condition=(Q(kind="grant") & Q(amount__gt=0))
                | (Q(kind__in=["application", "expiry", "reversal"]) & Q(amount__lt=0))
                | (Q(kind="adjustment") & ~Q(amount=0)),
                name="ledger_sign_follows_kind",
            ),
            models.CheckConstraint(
                condition=Q(kind="application", invoice__isnull=False)
                | (~Q(kind="application") & Q(invoice__isnull=True)),
                name="ledger_invoice_iff_application",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=["reversal", "adjustment"]) | ~Q(reason=""),
                name="ledger_staff_entries_have_a_reason",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "created_at"], name="ledger_tenant_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.grant_id})"


class CreditNote(TenantRow):
    """A credit note on a finalized invoice (DESIGN §14, issue 16 part 1, decision 020): the seller's document
    that takes back part or all of what the invoice billed, in the invoice's terms (its lines, their share of
    the invoice's discounts and tax), with a reason, numbered gaplessly in its own series (``CN-2026-000007``)
    and never changed once issued (a trigger, migration 0016) — only its Stripe sync state moves.

    ``outcome`` is what the credit does: lower what is still due on an unpaid invoice, refund a paid one through
    Stripe, or credit the tenant's prepaid balance (a grant of the ledger, ``CreditGrant.credit_note``).
    Amounts are rounded to the currency's minor unit: ``total = subtotal − discount_amount + tax_amount (unless
    the tax is included in the lines) − deduction_amount`` (a check constraint)."""

    class Reason(models.TextChoices):
        DUPLICATE = "duplicate"
        PRODUCT_UNSATISFACTORY = "product_unsatisfactory", "product unsatisfactory"
        ORDER_CHANGE = "order_change", "order change"
        FRAUDULENT = "fraudulent"
        OTHER = "other", "other (see memo)"

    class Outcome(models.TextChoices):
        REDUCE_DUE = "reduce_due", "reduce what is due"
        REFUND = "refund", "refund through Stripe"
        CREDIT_BALANCE = "credit_balance", "credit the prepaid balance"

    class Status(models.TextChoices):
        ISSUED = "issued"

    class SyncState(models.TextChoices):
        NOT_SYNCED = "not_synced"
        PENDING = "pending"
        SYNCED = "synced"
        FAILED = "failed"
        NOT_NEEDED = "not_needed", "not needed (the invoice is not on Stripe)"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="credit_notes")
    invoice = models.ForeignKey(
        Invoice, on_delete=models.PROTECT, related_name="credit_notes", db_constraint=False
    )
    number = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ISSUED)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    memo = models.TextField(blank=True, help_text="Required when the reason is other; printed on the note.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    currency = models.CharField(max_length=3)
    subtotal = models.DecimalField(**MONEY, help_text="The lines credited, in the invoice lines' own terms.")
    discount_amount = models.DecimalField(**MONEY, help_text="Their share of the invoice's discounts.")
    tax_amount = models.DecimalField(**MONEY, help_text="Their share of the invoice's tax.")
    tax_included = models.BooleanField(
        default=False, help_text="The tax is included in the lines' amounts (inclusive rates): not added."
    )
    deduction_amount = models.DecimalField(
        **MONEY,
        help_text="Their share of what the invoice deducted after tax: prepaid credit applied, negative lines.",
    )
    total = models.DecimalField(**MONEY, help_text="What is credited.")
    # PROTECT: the document names who issued it for good (deactivate such a user rather than delete them)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    issued_at = models.DateTimeField(default=timezone.now)
    request_key = models.CharField(
        max_length=64, blank=True, help_text="The admin form's one-time key: a double submit issues once."
    )
    # The copy on Stripe (DESIGN §7): these columns follow Stripe after issue; the trigger lets only them change.
    stripe_credit_note_id = models.CharField(max_length=255, blank=True)
    stripe_refund_id = models.CharField(max_length=255, blank=True)
    sync_state = models.CharField(max_length=16, choices=SyncState.choices, default=SyncState.NOT_SYNCED)
    sync_error = models.TextField(blank=True)
    sync_attempted_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-issued_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(subtotal__gt=0, total__gt=0, discount_amount__gte=0, tax_amount__gte=0),
                name="creditnote_amounts_valid",
            ),
            models.CheckConstraint(
                condition=(
                    Q(tax_included=False)
                    & Q(
                        total=models.F("subtotal")
                        - models.F("discount_amount")
                        + models.F("tax_amount")
                        - models.F("deduction_amount")
                    )
                )
                | (
                    Q(tax_included=True)
                    & Q(
                        total=models.F("subtotal")
                        - models.F("discount_amount")
                        - models.F("deduction_amount")
                    )
                ),
                name="creditnote_total_adds_up",
            ),
            models.CheckConstraint(
                condition=~Q(reason="other") | ~Q(memo=""), name="creditnote_other_has_memo"
            ),
            models.UniqueConstraint(
                fields=["tenant", "invoice", "request_key"],
                condition=~Q(request_key=""),
                name="creditnote_request_once",
            ),
            models.UniqueConstraint(
                fields=["tenant", "stripe_credit_note_id"],
                condition=~Q(stripe_credit_note_id=""),
                name="creditnote_unique_stripe_credit_note",
            ),
            # the target of the grant's (tenant, credit note) foreign key (migration 0016)
            models.UniqueConstraint(fields=["tenant", "id"], name="creditnote_tenant_id"),
            # unique across tenants by construction, like invoice numbers (decision 024)
            models.UniqueConstraint(fields=["tenant", "number"], name="creditnote_unique_number"),
        ]
        indexes = [models.Index(fields=["invoice", "issued_at"], name="creditnote_invoice_issued")]

    def __str__(self) -> str:
        return self.number


class CreditNoteLine(TenantRow):
    """One invoice line credited by a credit note: ``amount`` in the invoice line's own terms (never more than
    is left of it: the issuing service under the invoice's lock, and a trigger), ``quantity`` when credited by
    quantity; ``tax_amount`` and ``total`` are the note's figures shared out over its lines."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    credit_note = models.ForeignKey(
        CreditNote, on_delete=models.PROTECT, related_name="lines", db_constraint=False
    )
    invoice_line = models.ForeignKey(
        InvoiceLine, on_delete=models.PROTECT, related_name="credit_note_lines", db_constraint=False
    )
    position = models.PositiveIntegerField()
    description = models.CharField(max_length=300)
    quantity = models.DecimalField(**QUANTITY, null=True, blank=True, help_text="Credited by quantity.")
    amount = models.DecimalField(**MONEY)
    tax_amount = models.DecimalField(**MONEY, default=0)
    total = models.DecimalField(**MONEY)

    class Meta:
        ordering = ["credit_note", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "credit_note", "position"], name="creditnoteline_unique_position"
            ),
            models.UniqueConstraint(
                fields=["tenant", "credit_note", "invoice_line"], name="creditnoteline_one_per_invoice_line"
            ),
            models.CheckConstraint(
                condition=Q(amount__gt=0, tax_amount__gte=0, total__gte=0)
                & (Q(quantity__isnull=True) | Q(quantity__gt=0)),
                name="creditnoteline_amounts_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.description
