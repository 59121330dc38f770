# Stripe webhook events, moved here from the billing app: the table is renamed, the rows stay.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("billing", "0003_stripe_sync"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE billing_stripeevent RENAME TO payments_stripeevent",
                    reverse_sql="ALTER TABLE payments_stripeevent RENAME TO billing_stripeevent",
                ),
            ],
            state_operations=[
                migrations.CreateModel(
                    name="StripeEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("event_id", models.CharField(max_length=255, unique=True)),
                        ("type", models.CharField(max_length=100)),
                        ("payload", models.JSONField()),
                        (
                            "outcome",
                            models.CharField(
                                blank=True, help_text="What processing the event did.", max_length=200
                            ),
                        ),
                        ("received_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("processed_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "invoice",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="stripe_events",
                                to="billing.invoice",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-received_at"],
                    },
                ),
            ],
        ),
    ]
