"""Raw events move into monthly range partitions on their timestamp; the permanent dedupe moves to usage_eventid
(docs/decisions/023-partitioned-event-store.md). Online for an installation with data: ingest keeps writing
through every step but the last, which holds the table's lock for as long as a few catalogue changes take.

1. usage_eventid is created, and a trigger on the old table claims the id of every event inserted from then on.
2. The ids of the events already stored are copied into it in batches, each its own transaction.
3. The old table gets its future primary key, (tenant_id, timestamp, id), built CONCURRENTLY, and a check that
   every timestamp lies before the first month it will not hold, added NOT VALID and then VALIDATEd (a scan that
   does not block writers).
4. In one short transaction the old table becomes the partition ``usage_usageevent_legacy`` (FROM MINVALUE to that
   month; the validated check spares ATTACH its scan), under a new partitioned ``usage_usageevent`` with a
   DEFAULT partition and the coming months. Its foreign keys to tenant and agent, its per-row id uniqueness and the
   trigger of step 1 go: dedupe is usage_eventid's from here on. An installation without events gets no legacy
   partition.

Each step can run again after an interruption (``manage.py migrate`` again). Going back copies every event into a
plain table again (as usage.0011 left it) and drops usage_eventid.
"""

from datetime import UTC, datetime, timedelta

import django.db.models.deletion
from django.db import connection, migrations, models, transaction

BACKFILL_BATCH = 50_000
# The columns in the order of the table usage.0011 left, which the partitioned table keeps (ATTACH needs the
# same columns; INSERT … SELECT * between partitions needs the same order).
COLUMNS = """
    id bigint NOT NULL DEFAULT nextval('usage_usageevent_id_seq'),
    event_id varchar(128) NOT NULL,
    "timestamp" timestamptz NOT NULL,
    session_id varchar(128) NOT NULL,
    provider varchar(128) NOT NULL,
    model varchar(128) NOT NULL,
    usage jsonb NOT NULL,
    metadata jsonb NOT NULL,
    source varchar(16) NOT NULL,
    received_at timestamptz NOT NULL,
    agent_id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    replaces varchar(128) NOT NULL DEFAULT '',
    retracted_at timestamptz,
    retracted_by_event_id varchar(128) NOT NULL DEFAULT '',
    retracted_by_user_id integer
        REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED,
    retraction_reason varchar(500) NOT NULL DEFAULT ''
"""
CHECKS = """
    CONSTRAINT usageevent_replaces_another CHECK (NOT replaces = event_id),
    CONSTRAINT usageevent_retraction_marked_once CHECK (
        retracted_at IS NOT NULL
        OR (retracted_by_event_id = '' AND retracted_by_user_id IS NULL AND retraction_reason = '')),
    CONSTRAINT usageevent_staff_retraction_has_reason CHECK (
        retracted_by_user_id IS NULL OR (NOT retraction_reason = '' AND retracted_by_event_id = ''))
"""
GAPS_PREDICATE = "(source)::text LIKE 'livekit%' AND (metadata)::text LIKE '%\"gap_%'"

CLAIM_TRIGGER = """
CREATE TABLE IF NOT EXISTS usage_eventid (
    tenant_id bigint NOT NULL,
    event_id varchar(128) NOT NULL,
    "timestamp" timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE OR REPLACE FUNCTION usage_event_claim_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_eventid VALUES (NEW.tenant_id, NEW.event_id, NEW.timestamp) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS usage_event_claim_id ON usage_usageevent;
CREATE TRIGGER usage_event_claim_id AFTER INSERT ON usage_usageevent
    FOR EACH ROW EXECUTE FUNCTION usage_event_claim_id();
"""


def _execute(sql: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def _month_after(moment: datetime) -> datetime:
    return datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)


def is_partitioned() -> bool:
    """Whether step 4 is done (each step can run again after an interruption; this one must not)."""
    return _execute("SELECT relkind = 'p' FROM pg_class WHERE oid = 'usage_usageevent'::regclass")[0][0]


def claim_ids(apps, schema_editor):
    if is_partitioned():
        return
    with transaction.atomic():
        _execute(CLAIM_TRIGGER)


def backfill_ids(apps, schema_editor):
    """The ids stored before the trigger: the trigger's lock waited for every writer in flight, so each row is
    either at most the highest id now or claimed by the trigger."""
    if is_partitioned():
        return
    (last,) = _execute("SELECT coalesce(max(id), 0) FROM usage_usageevent")[0]
    for low in range(0, last, BACKFILL_BATCH):
        with transaction.atomic():
            _execute(
                "INSERT INTO usage_eventid SELECT tenant_id, event_id, timestamp FROM usage_usageevent "
                "WHERE id > %s AND id <= %s ON CONFLICT DO NOTHING",
                [low, low + BACKFILL_BATCH],
            )


def legacy_end() -> datetime:
    """The first month the old table will not hold: after its newest event and after tomorrow (events are accepted
    up to 5 minutes ahead, so none written before the swap can fall past it)."""
    newest = _execute("SELECT max(timestamp) FROM usage_usageevent")[0][0]
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    return _month_after(max(newest or tomorrow, tomorrow))


def prepare_legacy(apps, schema_editor):
    if is_partitioned() or not _execute("SELECT EXISTS (SELECT FROM usage_usageevent)")[0][0]:
        return
    # an index left invalid by an interrupted CONCURRENTLY build is dropped and built again
    if _execute(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass('usage_usageevent_legacy_key')"
    ):
        _execute("DROP INDEX CONCURRENTLY usage_usageevent_legacy_key")
    _execute(
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS usage_usageevent_legacy_key "
        "ON usage_usageevent (tenant_id, timestamp, id)"
    )
    with transaction.atomic():
        _execute("ALTER TABLE usage_usageevent DROP CONSTRAINT IF EXISTS usageevent_legacy_range")
        _execute(
            "ALTER TABLE usage_usageevent ADD CONSTRAINT usageevent_legacy_range CHECK (timestamp < %s) NOT VALID",
            [legacy_end()],
        )
    for check in (
        "legacy_range",
        "replaces_another",
        "retraction_marked_once",
        "staff_retraction_has_reason",
    ):
        _execute(f"ALTER TABLE usage_usageevent VALIDATE CONSTRAINT usageevent_{check}")


SWAP_OLD = """
LOCK TABLE usage_usageevent IN ACCESS EXCLUSIVE MODE;
DROP TRIGGER usage_event_claim_id ON usage_usageevent;
DROP FUNCTION usage_event_claim_id();
DROP TRIGGER usage_event_only_retracted ON usage_usageevent;
ALTER TABLE usage_usageevent
    DROP CONSTRAINT usage_usageevent_agent_id_077f0124_fk_tenants_agent_id,
    DROP CONSTRAINT usage_usageevent_tenant_id_ef6ed7b0_fk_tenants_tenant_id,
    DROP CONSTRAINT usageevent_unique_id_per_tenant,
    DROP CONSTRAINT usage_usageevent_pkey;
DROP INDEX usage_usageevent_agent_id_077f0124, usage_usageevent_tenant_id_ef6ed7b0, usageevent_tenant_time;
"""

NEW_PARENT = f"""
CREATE TABLE usage_usageevent ({COLUMNS},
    {CHECKS},
    CONSTRAINT usage_usageevent_pkey PRIMARY KEY (tenant_id, timestamp, id)
) PARTITION BY RANGE (timestamp);
ALTER SEQUENCE usage_usageevent_id_seq OWNED BY usage_usageevent.id;
CREATE INDEX usageevent_tenant_session ON usage_usageevent (tenant_id, session_id);
CREATE INDEX usageevent_gaps ON usage_usageevent (tenant_id, timestamp) WHERE {GAPS_PREDICATE};
CREATE TRIGGER usage_event_only_retracted BEFORE UPDATE ON usage_usageevent
    FOR EACH ROW EXECUTE FUNCTION usage_event_only_retracted();
CREATE TABLE usage_usageevent_default PARTITION OF usage_usageevent DEFAULT;
"""


def _month_partition(start: datetime) -> None:
    end = _month_after(start)
    _execute(
        f"CREATE TABLE usage_usageevent_y{start:%Y}m{start:%m} PARTITION OF usage_usageevent "
        "FOR VALUES FROM (%s) TO (%s)",
        [start, end],
    )


def swap(apps, schema_editor):
    """Four months of partitions from the first the legacy table does not hold (or from the month 35 days ago on a
    new installation); beat keeps creating them ahead from then on (usage.partitions)."""
    with transaction.atomic():
        if is_partitioned():
            return
        has_legacy = _execute("SELECT EXISTS (SELECT FROM usage_usageevent)")[0][0]
        (next_id,) = _execute("SELECT coalesce(max(id), 0) + 1 FROM usage_usageevent")[0]
        end = None
        if has_legacy:
            (end,) = _execute(
                "SELECT substring(pg_get_constraintdef(oid) from '''(.*)''')::timestamptz FROM pg_constraint "
                "WHERE conname = 'usageevent_legacy_range'"
            )[0]
        _execute(SWAP_OLD)
        # the identity's own sequence goes with it; the partitioned table takes ids from a plain one, going on
        _execute("ALTER TABLE usage_usageevent ALTER id DROP IDENTITY")
        _execute(f"CREATE SEQUENCE usage_usageevent_id_seq START WITH {int(next_id)}")
        if has_legacy:
            _execute("ALTER TABLE usage_usageevent RENAME TO usage_usageevent_legacy")
            _execute(
                "ALTER TABLE usage_usageevent_legacy "
                "ALTER id SET DEFAULT nextval('usage_usageevent_id_seq'), "
                "ADD CONSTRAINT usage_usageevent_legacy_pkey PRIMARY KEY USING INDEX usage_usageevent_legacy_key"
            )
            _execute("ALTER INDEX usageevent_tenant_session RENAME TO usageevent_legacy_tenant_session")
            _execute("ALTER INDEX usageevent_gaps RENAME TO usageevent_legacy_gaps")
        else:
            _execute("DROP TABLE usage_usageevent")
        _execute(NEW_PARENT)
        if has_legacy:
            _execute(
                "ALTER TABLE usage_usageevent ATTACH PARTITION usage_usageevent_legacy "
                "FOR VALUES FROM (MINVALUE) TO (%s)",
                [end],
            )
            first = end
        else:
            now = datetime.now(UTC) - timedelta(days=35)
            first = datetime(now.year, now.month, 1, tzinfo=UTC)
        for _ in range(4):
            _month_partition(first)
            first = _month_after(first)


BACK = f"""
SET CONSTRAINTS ALL IMMEDIATE;
CREATE TABLE usage_usageevent_plain ({COLUMNS.replace("nextval('usage_usageevent_id_seq')", "0")});
INSERT INTO usage_usageevent_plain SELECT * FROM usage_usageevent;
DROP TABLE usage_usageevent CASCADE;
DROP TABLE usage_eventid;
ALTER TABLE usage_usageevent_plain RENAME TO usage_usageevent;
ALTER TABLE usage_usageevent
    ALTER id DROP DEFAULT,
    ADD CONSTRAINT usage_usageevent_pkey PRIMARY KEY (id),
    ADD CONSTRAINT usageevent_unique_id_per_tenant UNIQUE (tenant_id, event_id),
    ADD CONSTRAINT usage_usageevent_agent_id_077f0124_fk_tenants_agent_id FOREIGN KEY (agent_id)
        REFERENCES tenants_agent (id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT usage_usageevent_tenant_id_ef6ed7b0_fk_tenants_tenant_id FOREIGN KEY (tenant_id)
        REFERENCES tenants_tenant (id) DEFERRABLE INITIALLY DEFERRED,
    {CHECKS.replace("CONSTRAINT", "ADD CONSTRAINT")};
ALTER TABLE usage_usageevent ALTER id ADD GENERATED BY DEFAULT AS IDENTITY;
SELECT setval(pg_get_serial_sequence('usage_usageevent', 'id'), coalesce(max(id), 0) + 1, false)
    FROM usage_usageevent;
CREATE INDEX usage_usageevent_agent_id_077f0124 ON usage_usageevent (agent_id);
CREATE INDEX usage_usageevent_tenant_id_ef6ed7b0 ON usage_usageevent (tenant_id);
CREATE INDEX usageevent_tenant_time ON usage_usageevent (tenant_id, timestamp);
CREATE INDEX usageevent_tenant_session ON usage_usageevent (tenant_id, session_id);
CREATE INDEX usageevent_gaps ON usage_usageevent (tenant_id, timestamp) WHERE {GAPS_PREDICATE};
CREATE TRIGGER usage_event_only_retracted BEFORE UPDATE ON usage_usageevent
    FOR EACH ROW EXECUTE FUNCTION usage_event_only_retracted();
"""  # noqa: S608 - constant SQL fragments only


def back(apps, schema_editor):
    with transaction.atomic():
        _execute(BACK)


def noop(apps, schema_editor):
    pass


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("usage", "0011_event_corrections"), ("tenants", "0005_agent_name_full_match")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(claim_ids, back),
                migrations.RunPython(backfill_ids, noop),
                migrations.RunPython(prepare_legacy, noop),
                migrations.RunPython(swap, noop),
            ],
            state_operations=[
                migrations.RemoveConstraint(model_name="usageevent", name="usageevent_unique_id_per_tenant"),
                migrations.RemoveIndex(model_name="usageevent", name="usageevent_tenant_time"),
                migrations.AlterField(
                    model_name="usageevent",
                    name="tenant",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
                migrations.AlterField(
                    model_name="usageevent",
                    name="agent",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.agent",
                    ),
                ),
                migrations.CreateModel(
                    name="EventId",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "tenant_id",
                                "event_id",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        ("event_id", models.CharField(max_length=128)),
                        ("timestamp", models.DateTimeField()),
                        (
                            "tenant",
                            models.ForeignKey(
                                db_constraint=False,
                                db_index=False,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="+",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                ),
            ],
        )
    ]
