"""The record of archived months of raw events (usage.archive, docs/decisions/023-partitioned-event-store.md)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0012_partitioned_events"),
    ]

    operations = [
        migrations.CreateModel(
            name="EventArchive",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("month", models.DateField(help_text="The first day of the UTC month.", unique=True)),
                ("path", models.CharField(max_length=500)),
                ("rows", models.BigIntegerField()),
                ("sha256", models.CharField(max_length=64)),
                (
                    "archived_at",
                    models.DateTimeField(blank=True, help_text="When its partition was dropped.", null=True),
                ),
                (
                    "restored_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="Brought back by restore_events; beat leaves it until archived again.",
                        null=True,
                    ),
                ),
            ],
            options={
                "ordering": ["month"],
            },
        ),
    ]
