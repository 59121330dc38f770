"""The per-session rollups' session index gets the hour (issue 13 part 5): a page of a report by session is
found by keyset on the session id with the range's hours checked in the index (an index-only scan), not on
the table. Built concurrently: ingest goes on while it builds."""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("usage", "0014_citus_keys")]

    operations = [
        AddIndexConcurrently(
            model_name="usagerollup",
            index=models.Index(fields=["tenant", "session_id", "hour"], name="usagerollup_session_hour"),
        ),
        RemoveIndexConcurrently(model_name="usagerollup", name="usagerollup_tenant_session"),
    ]
