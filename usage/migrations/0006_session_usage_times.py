from django.db import migrations, models

# Sessions reported only through events get their times from their events (issue 18, item 5). The ingest
# statement keeps both columns from now on; this fills them once for the sessions stored before. Running the
# UPDATE again (e.g. for events an old process stored while this deployed) is harmless: it only widens.
BACKFILL = """
UPDATE usage_session s
SET first_usage_at = least(s.first_usage_at, e.first), last_usage_at = greatest(s.last_usage_at, e.last)
FROM (
    SELECT tenant_id, session_id, min(timestamp) AS first, max(timestamp) AS last
    FROM usage_usageevent WHERE session_id <> '' GROUP BY 1, 2
) e
WHERE s.tenant_id = e.tenant_id AND s.session_id = e.session_id
"""


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0005_drop_payload_hash"),
    ]

    operations = [
        migrations.AddField(
            model_name="session",
            name="first_usage_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="session",
            name="last_usage_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
