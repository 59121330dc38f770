import django.db.models.functions.comparison
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built concurrently: sessions are written by every ingested batch.
    atomic = False

    dependencies = [
        ("usage", "0006_session_usage_times"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="session",
            index=models.Index(
                models.F("tenant"),
                models.OrderBy(
                    django.db.models.functions.comparison.Coalesce(
                        models.F("started_at"), models.F("first_usage_at")
                    ),
                    descending=True,
                    nulls_last=True,
                ),
                models.OrderBy(models.F("created_at"), descending=True),
                name="session_tenant_start",
            ),
        ),
        RemoveIndexConcurrently(model_name="session", name="session_tenant_started"),
    ]
