"""Tenants (customer companies), their people, their agents and the agents' API keys (DESIGN §2)."""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone as dj_timezone

CURRENCY_EXPONENTS = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "JPY": 0,
    "KRW": 0,
    "SEK": 2,
}


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone name")


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    currency = models.CharField(
        max_length=3, default="USD", choices=[(c, c) for c in sorted(CURRENCY_EXPONENTS)]
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    billing_email = models.EmailField(blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class TenantScopedQuerySet(models.QuerySet):
    """Querysets of tenant-owned rows start from the tenant, never from a global lookup by pk."""

    def for_tenant(self, tenant: Tenant) -> TenantScopedQuerySet:
        return self.filter(tenant=tenant)

    def lock(self, pk: int, of: tuple[str, ...] = ()) -> models.Model:
        """The row ``pk`` of this queryset, locked until the transaction ends (``select_for_update(of=…)``), by a
        statement that names its tenant: a caller that knows only the id (a task's argument) has it looked up
        first, unlocked, so the lock itself is one Citus can route to the tenant's node (decision 024). Raises
        the model's DoesNotExist when there is no such row."""
        found = list(self.filter(pk=pk).order_by().values_list("tenant_id", flat=True)[:1])
        if not found:
            raise self.model.DoesNotExist(f"no {self.model._meta.object_name} {pk}")
        return self.select_for_update(of=of).get(tenant_id=found[0], pk=pk)


class TenantRow(models.Model):
    """A row of a table Citus would distribute by tenant (tenants.citus): saving one updates it by its id *and*
    its tenant, so the statement can be routed to the node holding that tenant (decision 024). Django's save
    names the primary key alone; this is the one place that adds the tenant (as django-multitenant does)."""

    class Meta:
        abstract = True

    def scoped(self, related: str) -> models.QuerySet:
        """The rows of the reverse relation ``related`` (``invoice.scoped("lines")``) that also name this row's
        tenant: the tenant's rows are where Citus would look for them (the rows reached through the foreign key
        are the same ones: foreign keys between distributed tables pair the tenant, decision 024)."""
        return getattr(self, related).filter(tenant_id=self.tenant_id)

    def _do_update(self, base_qs, using, pk_val, values, update_fields, forced_update):
        scoped = base_qs.filter(tenant_id=self.tenant_id)
        return super()._do_update(scoped, using, pk_val, values, update_fields, forced_update)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"  # manages agents, keys and budgets
        VIEWER = "viewer"  # read only

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class Agent(TenantRow):
    class Status(models.TextChoices):
        ACTIVE = "active"
        DISABLED = "disabled"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="agents")
    name = models.CharField(
        max_length=100,
        validators=[RegexValidator(r"\A[A-Za-z0-9][A-Za-z0-9._ -]*\Z", "letters, digits, . _ - space")],
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="agent_unique_name_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant.slug})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class APIKey(TenantRow):
    """One agent's credential. Only the public id and an HMAC of the secret are stored (see tenants.keys)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="api_keys", db_constraint=False)
    # unique across tenants by construction (random, decision 024); authentication finds a key by it alone
    key_id = models.CharField(max_length=32, db_index=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    label = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("created_at")),
                name="apikey_expires_after_creation",
            ),
            models.UniqueConstraint(fields=["tenant", "key_id"], name="apikey_unique_key_id"),
        ]

    def __str__(self) -> str:
        return f"{self.key_id} ({self.agent.name})"

    def is_usable(self, now=None) -> bool:
        now = now or dj_timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def clean(self) -> None:
        if self.agent_id and self.tenant_id and self.agent.tenant_id != self.tenant_id:
            raise ValidationError("The agent belongs to another tenant.")


class Invitation(models.Model):
    """An invitation to join a tenant with a role, sent by e-mail as a one-time link (see tenants.invitations).

    Only a hash of the link's token is stored. An invitation is open until it is accepted, revoked or past
    ``expires_at``; inviting the same address again revokes the open one, so a tenant has at most one open
    invitation per address (a partial unique index).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()  # stored lower-cased
    role = models.CharField(max_length=16, choices=Membership.Role.choices)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "email"],
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_open_per_address",
            ),
            models.CheckConstraint(
                condition=Q(accepted_at__isnull=True) | Q(revoked_at__isnull=True),
                name="invitation_accepted_or_revoked_not_both",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} → {self.tenant} ({self.role})"

    def is_open(self, now=None) -> bool:
        now = now or dj_timezone.now()
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > now
