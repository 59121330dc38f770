"""Stripe's webhook inbox stays a plain table on the coordinator (decision 024), which Citus does not let refer
to a distributed table: the invoice it names is kept without a database foreign key (invoices are never
deleted)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="stripeevent",
            name="invoice",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="stripe_events",
                to="billing.invoice",
            ),
        ),
    ]
