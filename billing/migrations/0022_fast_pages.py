# A tenant's generation (0016) also changes with its per-call costs: what the portal caches per process behind
# it now includes Σ call costs of a period (billing.call_costs.calls_sum), and a rebuild of the call costs
# (manage.py rebuild_call_costs) writes them without touching the rollups. Ingest writes call costs in the
# transaction that moves the rollups, on the generation row it already holds: one more upsert of that row.

from django.db import migrations

EVENTS = (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))

FORWARD = [
    f"""
    CREATE TRIGGER billing_callcost_tenant_generation_{event.lower()}
    AFTER {event} ON billing_callcost REFERENCING {rows} TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION billing_new_tenant_generation()
    """
    for event, rows in EVENTS
] + [
    """
    CREATE TRIGGER billing_callcost_tenant_generation_truncate AFTER TRUNCATE ON billing_callcost
    FOR EACH STATEMENT EXECUTE FUNCTION billing_forget_tenant_generations()
    """
]

BACKWARD = [
    f"DROP TRIGGER IF EXISTS billing_callcost_tenant_generation_{event} ON billing_callcost"
    for event in ("insert", "update", "delete", "truncate")
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0021_id_lookups")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
