"""Keys ready for Citus (decision 024): outbox events, endpoints and deliveries get the primary key
(tenant_id, id); a delivery gets its tenant (its event's) and names its event and endpoint with it."""

import django.db.models.deletion
from django.db import migrations, models

from tenants.citus import tenant_primary_key


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0002_webhooks"),
        ("tenants", "0006_citus_keys"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="webhookdelivery",
            name="webhookdelivery_once_per_endpoint",
        ),
        migrations.AddField(
            model_name="webhookdelivery",
            name="tenant",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+", to="tenants.tenant"
            ),
        ),
        migrations.RunSQL(
            "UPDATE notifications_webhookdelivery d SET tenant_id = e.tenant_id FROM notifications_event e "
            "WHERE e.id = d.event_id",
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="webhookdelivery",
            name="tenant",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="tenants.tenant"
            ),
        ),
        migrations.AlterField(
            model_name="webhookdelivery",
            name="endpoint",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="deliveries",
                to="notifications.webhookendpoint",
            ),
        ),
        migrations.AlterField(
            model_name="webhookdelivery",
            name="event",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="deliveries",
                to="notifications.event",
            ),
        ),
        migrations.AddConstraint(
            model_name="webhookdelivery",
            constraint=models.UniqueConstraint(
                fields=("tenant", "event", "endpoint"), name="webhookdelivery_once_per_endpoint"
            ),
        ),
        migrations.RunSQL(*tenant_primary_key("notifications_event")),
        migrations.RunSQL(*tenant_primary_key("notifications_webhookendpoint")),
        migrations.RunSQL(
            *tenant_primary_key(
                "notifications_webhookdelivery",
                {"event_id": "notifications_event", "endpoint_id": "notifications_webhookendpoint"},
            )
        ),
    ]
