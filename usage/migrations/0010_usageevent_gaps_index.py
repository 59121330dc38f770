# The usage explorer's gaps (usage.gaps.range_gaps) read only events that carry a gap: this partial index holds
# those few, and its predicate is repeated word for word by the query (usage.gaps.GAP_EVENTS). Built
# CONCURRENTLY so ingest keeps writing while it is made on a large table.

from django.db import migrations

# LIKE rather than IN: PostgreSQL prints an IN list back in a form that re-parses differently (bench.loader
# rebuilds indexes from their printed definitions and checks the schema is unchanged).
PREDICATE = "(source)::text LIKE 'livekit%' AND (metadata)::text LIKE '%\"gap_%'"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("usage", "0009_meter_names")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS usageevent_gaps "
            f"ON usage_usageevent (tenant_id, timestamp) WHERE {PREDICATE}",
            "DROP INDEX CONCURRENTLY IF EXISTS usageevent_gaps",
        )
    ]
