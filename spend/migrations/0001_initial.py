# Budgets and their alerts, moved here from the tenants app: the tables are renamed, the rows stay.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("tenants", "0002_budgets"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE tenants_budget RENAME TO spend_budget",
                    reverse_sql="ALTER TABLE spend_budget RENAME TO tenants_budget",
                ),
                migrations.RunSQL(
                    "ALTER TABLE tenants_budgetalert RENAME TO spend_budgetalert",
                    reverse_sql="ALTER TABLE spend_budgetalert RENAME TO tenants_budgetalert",
                ),
            ],
            state_operations=[
                migrations.CreateModel(
                    name="Budget",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "monthly_amount",
                            models.DecimalField(
                                decimal_places=4, help_text="In the tenant's currency.", max_digits=18
                            ),
                        ),
                        (
                            "thresholds",
                            models.JSONField(default=list, help_text="Percentages, e.g. [50, 80, 100]."),
                        ),
                        (
                            "alert_email",
                            models.EmailField(
                                blank=True, help_text="Empty: the tenant's billing e-mail.", max_length=254
                            ),
                        ),
                        (
                            "webhook_url",
                            models.URLField(
                                blank=True, help_text="Optional: receives a signed JSON POST per alert."
                            ),
                        ),
                        ("webhook_secret", models.CharField(blank=True, editable=False, max_length=64)),
                        ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "tenant",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="budget",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                    options={
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("monthly_amount__gt", 0)), name="budget_positive"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="BudgetAlert",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("period_start", models.DateField()),
                        ("threshold", models.PositiveSmallIntegerField()),
                        ("spend", models.DecimalField(decimal_places=4, max_digits=18)),
                        ("budget_amount", models.DecimalField(decimal_places=4, max_digits=18)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("email_sent_at", models.DateTimeField(blank=True, null=True)),
                        ("webhook_delivered_at", models.DateTimeField(blank=True, null=True)),
                        ("webhook_error", models.CharField(blank=True, max_length=300)),
                        (
                            "tenant",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="budget_alerts",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["-created_at"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("tenant", "period_start", "threshold"),
                                name="budgetalert_once_per_threshold",
                            )
                        ],
                    },
                ),
            ],
        ),
    ]
