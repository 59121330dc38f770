"""Keys ready for Citus (decision 024): budgets, alerts, policies and holds get the primary key (tenant_id, id);
a hold names its agent with its tenant."""

import django.db.models.deletion
from django.db import migrations, models

from tenants.citus import tenant_primary_key


class Migration(migrations.Migration):
    dependencies = [
        ("spend", "0005_balance_alerts_and_auto_recharge"),
        ("tenants", "0006_citus_keys"),
    ]

    operations = [
        # tenants.0006 dropped these foreign keys with the agents' old primary key; the model stops asking for
        # the single-column form, and the paired one is added below (going back leaves them out: the old
        # single-column form cannot be added before tenants.0006 is undone)
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="hold",
                    name="agent",
                    field=models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="tenants.agent",
                    ),
                ),
            ],
        ),
        migrations.RunSQL(*tenant_primary_key("spend_budget")),
        migrations.RunSQL(*tenant_primary_key("spend_budgetalert")),
        migrations.RunSQL(*tenant_primary_key("spend_spendpolicy")),
        migrations.RunSQL(*tenant_primary_key("spend_hold", {"agent_id": "tenants_agent"})),
    ]
