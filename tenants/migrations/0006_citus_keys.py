"""Keys ready for Citus (decision 024): agents and API keys get the primary key (tenant_id, id); an API key's
agent is named with its tenant; key ids stay unique per tenant (and across tenants by construction).

Runs after the last migrations of usage and spend on main because dropping the agents' old key drops the
foreign keys naming it (theirs add them back paired with the tenant, in their own citus_keys migrations)."""

import django.db.models.deletion
from django.db import migrations, models

from tenants.citus import tenant_primary_key


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0005_agent_name_full_match"),
        # after the partitioned event store (usage.0012), which drops the events' foreign key to agents itself
        ("usage", "0013_event_archive"),
        ("spend", "0005_balance_alerts_and_auto_recharge"),
    ]

    operations = [
        migrations.AlterField(
            model_name="apikey",
            name="agent",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="api_keys",
                to="tenants.agent",
            ),
        ),
        migrations.AlterField(
            model_name="apikey",
            name="key_id",
            field=models.CharField(db_index=True, editable=False, max_length=32),
        ),
        migrations.AddConstraint(
            model_name="apikey",
            constraint=models.UniqueConstraint(fields=("tenant", "key_id"), name="apikey_unique_key_id"),
        ),
        migrations.RunSQL(*tenant_primary_key("tenants_agent")),
        migrations.RunSQL(*tenant_primary_key("tenants_apikey", {"agent_id": "tenants_agent"})),
    ]
