# What each event's tiered quantities were charged on arrival, so that a correction reverses exactly that
# (decision 021).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0017_credit_notes"),
        ("tenants", "0005_agent_name_full_match"),
    ]

    operations = [
        migrations.CreateModel(
            name="TieredCharge",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("event_id", models.CharField(max_length=128)),
                ("timestamp", models.DateTimeField(help_text="The event's.")),
                ("charges", models.JSONField(help_text="meter code → cost (a decimal string, 20 places)")),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="tenants.tenant"
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["timestamp"], name="tieredcharge_time")],
                "constraints": [
                    models.UniqueConstraint(fields=("tenant", "event_id"), name="tieredcharge_unique_event")
                ],
            },
        ),
    ]
