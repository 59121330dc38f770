"""Keys ready for Citus (decision 024): sessions and both rollups get the primary key (tenant_id, id) and name
their agent with its tenant. The events table and its ids have their keys from the partitioned event store
(usage.0012, decision 023), which also dropped its foreign keys to tenants and agents."""

import django.db.models.deletion
from django.db import migrations, models

from tenants.citus import tenant_primary_key


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0006_citus_keys"),
        ("usage", "0013_event_archive"),
    ]

    operations = [
        # tenants.0006 dropped these foreign keys with the agents' old primary key; the model stops asking for
        # the single-column form, and the paired one is added below (going back leaves them out: the old
        # single-column form cannot be added before tenants.0006 is undone)
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="agentrollup",
                    name="agent",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.agent",
                    ),
                ),
                migrations.AlterField(
                    model_name="session",
                    name="agent",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="sessions",
                        to="tenants.agent",
                    ),
                ),
                migrations.AlterField(
                    model_name="usagerollup",
                    name="agent",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.agent",
                    ),
                ),
            ],
        ),
        migrations.RunSQL(*tenant_primary_key("usage_session", {"agent_id": "tenants_agent"})),
        migrations.RunSQL(*tenant_primary_key("usage_usagerollup", {"agent_id": "tenants_agent"})),
        migrations.RunSQL(*tenant_primary_key("usage_agentrollup", {"agent_id": "tenants_agent"})),
    ]
