"""Usage tables: the meter catalogue, conversations, raw events (the record of truth) and hourly rollups.

Events are never updated but to be retracted, once (usage.corrections; a trigger refuses anything else). They are
stored in monthly partitions (usage.partitions); their ids are claimed forever in ``EventId`` (the dedupe), and a
resend with a different payload is told from an identical one by comparing it with the stored event
(usage.ingest). Months past the retention are archived to files and can be restored (usage.archive). Rollups are derived from events in the same transaction that
inserts or retracts them (usage.ingest), so each accepted event is counted exactly once, and a retracted one
no longer.
"""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from tenants.models import Agent, Tenant, TenantRow, TenantScopedQuerySet

QUANTITY_DIGITS = 30
QUANTITY_PLACES = 6


class Meter(models.Model):
    """A billable quantity. Seeded with DESIGN §3's catalogue by a migration; editable in admin."""

    code = models.SlugField(max_length=64, unique=True)
    unit = models.CharField(max_length=32)
    description = models.CharField(max_length=200)
    name = models.CharField(
        max_length=100, blank=True, help_text="What people read (portal, invoices); empty: the code."
    )
    is_active = models.BooleanField(default=True, help_text="Inactive meters are refused at ingestion.")
    display_order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["display_order", "code"]

    def __str__(self) -> str:
        return self.code

    @property
    def label(self) -> str:
        return self.name or self.code


def meter_names() -> dict[str, str]:
    """Meter code → the name people read (the code itself where a meter has no name)."""
    return {code: name or code for code, name in Meter.objects.values_list("code", "name")}


# A session's start as lists sort by it (Session.start): the reported start, else the first usage.
START = Coalesce(F("started_at"), F("first_usage_at"))


class Session(TenantRow):
    """One conversation. Created by its first event or by ``PUT /api/v1/sessions/{id}``.

    ``started_at``/``ended_at`` are what the agent reported (PUT); ``first_usage_at``/``last_usage_at`` are
    the earliest and latest timestamps of its stored events, kept by the ingest statement (usage.ingest), so
    a session reported only through events still has times to show and sort by (``start``, ``end``).
    """

    class ReportMode(models.TextChoices):
        NONE = "", "none yet"
        METRICS = "metrics", "LiveKit per-request metrics"
        USAGE = "usage", "LiveKit per-model usage report"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="sessions")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="sessions", db_constraint=False)
    session_id = models.CharField(max_length=128)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_user_id = models.CharField(max_length=128, blank=True)
    conversation_type = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    livekit_report_mode = models.CharField(max_length=8, choices=ReportMode.choices, default="", blank=True)
    # Provider and model per kind of usage ("llm", "stt", "tts": usage.ingest.DEFAULT_MODEL_KINDS) for this
    # session's events that name none (LiveKit before 1.2.12 sends no model metadata), applied at ingest.
    default_models = models.JSONField(default=dict, blank=True)
    first_usage_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_usage_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "session_id"], name="session_unique_per_tenant"),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True)
                | Q(started_at__isnull=True)
                | Q(ended_at__gte=models.F("started_at")),
                name="session_ends_after_start",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="session_tenant_recent"),
            # The portal lists sessions newest first by start (portal.views.sessions.sessions), 50 to a page.
            models.Index(
                F("tenant"), START.desc(nulls_last=True), F("created_at").desc(), name="session_tenant_start"
            ),
        ]

    def __str__(self) -> str:
        return self.session_id

    @property
    def start(self):
        """When the conversation began: as the agent reported it, else its first usage."""
        return self.started_at or self.first_usage_at

    @property
    def end(self):
        """When it ended: as the agent reported it, else its last usage so far."""
        return self.ended_at or self.last_usage_at


class UsageEvent(models.Model):
    """One event as an agent sent it (or as ingest derived it from a LiveKit report).

    The table is partitioned by month of ``timestamp`` (usage.0012: its primary key in the database is
    ``(tenant_id, timestamp, id)``; ``id`` comes from a sequence and stays the receipt order). Look an event up
    by id through ``EventId``, which holds its timestamp, so that one partition is read (``usage.partitions``).

    Corrections (docs/decisions/021-event-corrections.md) never change what was sent: a retracted event keeps
    every field and its id stays taken; it is only marked, once, with when it was retracted and by what — the
    event that ``replaces`` it, the agent with an optional reason, or platform staff (``retracted_by_user``)
    with a required one. Everything that counts usage counts only events that are not retracted.
    """

    class Source(models.TextChoices):
        API = "api"
        LIVEKIT_METRICS = "livekit_metrics"
        LIVEKIT_USAGE = "livekit_usage"

    # No foreign keys to tenant and agent: both come from the authenticated key, never from the body, and their
    # checks cost 4.5–6.4 ms per 1,000 events (decision 023).
    tenant = models.ForeignKey(
        Tenant, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False, db_index=False
    )
    agent = models.ForeignKey(
        Agent, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False, db_index=False
    )
    event_id = models.CharField(max_length=128)
    timestamp = models.DateTimeField()
    session_id = models.CharField(max_length=128, blank=True, default="")
    provider = models.CharField(max_length=128, blank=True, default="")
    model = models.CharField(max_length=128, blank=True, default="")
    usage = models.JSONField(help_text="meter code → quantity as a decimal string")
    metadata = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    received_at = models.DateTimeField(default=timezone.now)
    # The id of the event this one corrects (retracted in the transaction that stored this one); "" for none.
    replaces = models.CharField(max_length=128, blank=True, default="", db_default="")
    retracted_at = models.DateTimeField(null=True, blank=True)
    retracted_by_event_id = models.CharField(
        max_length=128, blank=True, default="", db_default="", help_text="The event that replaced this one."
    )
    retraction_reason = models.CharField(max_length=500, blank=True, default="", db_default="")
    retracted_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        help_text="The member of platform staff who retracted it (empty: the agent that sent it).",
    )

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            # Added NOT VALID by usage.0011 (every stored row passes; no scan of a large table under its lock).
            models.CheckConstraint(condition=~Q(replaces=F("event_id")), name="usageevent_replaces_another"),
            models.CheckConstraint(
                condition=Q(retracted_at__isnull=False)
                | Q(retracted_by_event_id="", retraction_reason="", retracted_by_user__isnull=True),
                name="usageevent_retraction_marked_once",
            ),
            models.CheckConstraint(
                condition=Q(retracted_by_user__isnull=True)
                | (~Q(retraction_reason="") & Q(retracted_by_event_id="")),
                name="usageevent_staff_retraction_has_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "session_id"], name="usageevent_tenant_session"),
        ]
        permissions = [("retract_usageevent", "Can retract usage events (with a reason)")]

    def __str__(self) -> str:
        return self.event_id

    @property
    def is_retracted(self) -> bool:
        return self.retracted_at is not None

    @property
    def retracted_by(self) -> str:
        """Who took it out: "replacement", "staff" or "agent" ("" while it counts)."""
        if self.retracted_at is None:
            return ""
        if self.retracted_by_event_id:
            return "replacement"
        return "staff" if self.retracted_by_user_id else "agent"


class EventId(models.Model):
    """An event id taken, forever: the permanent dedupe (DESIGN §4), kept apart from the partitioned events because
    a unique index on them would have to include the month. Ingest claims ids here first and stores only the
    events it claimed (usage.ingest); the id stays when its month is archived, so a resend is still recognised.
    ``timestamp`` is the stored event's, so a lookup by id reads one partition, and tells an archived one.
    """

    pk = models.CompositePrimaryKey("tenant_id", "event_id")
    tenant = models.ForeignKey(
        Tenant, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False, db_index=False
    )
    event_id = models.CharField(max_length=128)
    timestamp = models.DateTimeField()

    objects = TenantScopedQuerySet.as_manager()

    def __str__(self) -> str:
        return self.event_id


class EventArchive(models.Model):
    """A month of raw events exported to a file and dropped from PostgreSQL (usage.archive): where the file is, and
    what it must read back as (rows, SHA-256 of its uncompressed CSV) before the month is dropped or restored."""

    month = models.DateField(unique=True, help_text="The first day of the UTC month.")
    path = models.CharField(max_length=500)
    rows = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    archived_at = models.DateTimeField(null=True, blank=True, help_text="When its partition was dropped.")
    restored_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Brought back by restore_events; beat leaves it until archived again.",
    )

    class Meta:
        ordering = ["month"]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m}"


class Rollup(TenantRow):
    """The fields both rollups share. ``hour`` is the start of the hour in the tenant's time zone (stored as
    an aware UTC instant), so a tenant-local day or calendar month is an exact union of buckets even for
    zones such as +05:30."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    meter = models.CharField(max_length=64)
    provider = models.CharField(max_length=128, blank=True, default="")
    model = models.CharField(max_length=128, blank=True, default="")
    hour = models.DateTimeField()
    quantity = models.DecimalField(max_digits=QUANTITY_DIGITS, decimal_places=QUANTITY_PLACES)
    event_count = models.PositiveIntegerField()

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.meter} {self.quantity_text} @ {self.hour:%Y-%m-%d %H:%M}"

    @property
    def quantity_text(self) -> str:
        """Every significant digit, without the six places the column stores (``2.6``, not ``2.600000``)."""
        return f"{Decimal(self.quantity).normalize():,f}"


class UsageRollup(Rollup):
    """Exact totals per (tenant, agent, session, meter, provider, model, hour)."""

    session_id = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "agent", "session_id", "meter", "provider", "model", "hour"],
                name="usagerollup_unique_group",
            ),
            models.CheckConstraint(condition=Q(quantity__gte=0), name="usagerollup_quantity_non_negative"),
        ]
        indexes = [
            models.Index(fields=["tenant", "hour"], name="usagerollup_tenant_hour"),
            # One session's usage reads a few rollups by session id; a report by session finds a page of the
            # sessions with usage in a range by keyset on the id, the hour read from the index alone.
            models.Index(fields=["tenant", "session_id", "hour"], name="usagerollup_session_hour"),
        ]


class AgentRollup(Rollup):
    """Exact totals per (tenant, agent, meter, provider, model, hour): ``UsageRollup`` without the session.

    Kept in the same statement as ``UsageRollup`` (usage.rollups), from the same inserted rows, so the two
    always agree. A session lasts minutes, so per-session rows grow with a period's events (about one row per
    12 events); these grow only with agents × models × hours. Period totals, active agents and every
    breakdown that is not by session read this table (usage.rollups); session views read ``UsageRollup``.
    """

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "agent", "meter", "provider", "model", "hour"],
                name="agentrollup_unique_group",
            ),
            models.CheckConstraint(condition=Q(quantity__gte=0), name="agentrollup_quantity_non_negative"),
        ]
        indexes = [models.Index(fields=["tenant", "hour"], name="agentrollup_tenant_hour")]
