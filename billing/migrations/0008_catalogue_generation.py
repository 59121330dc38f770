# A token that changes whenever anything pricing reads changes (plans, versions, prices, tiers, subscriptions,
# provider rates): per-call pricing at ingest (billing.call_costs) caches what it loaded per process and checks
# this one row per batch instead of reloading the plan (decision 017). Statement-level triggers, so bulk edits,
# raw SQL and the catalogue import are covered as well as the ORM. A fresh random value per change (never a
# counter): a rolled-back change leaves the previous token, which still describes the committed data.

from django.db import migrations

TABLES = [
    "billing_priceplan",
    "billing_planversion",
    "billing_price",
    "billing_pricetier",
    "billing_subscription",
    "billing_providerrate",
]

FORWARD = [
    """
    CREATE TABLE billing_cataloguegeneration (
        id smallint PRIMARY KEY CHECK (id = 1),
        token uuid NOT NULL
    )
    """,
    "INSERT INTO billing_cataloguegeneration (id, token) VALUES (1, gen_random_uuid())",
    """
    CREATE FUNCTION billing_new_catalogue_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO billing_cataloguegeneration (id, token) VALUES (1, gen_random_uuid())
        ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token;
        RETURN NULL;
    END
    $$
    """,
] + [
    f"""
    CREATE TRIGGER {table}_catalogue_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION billing_new_catalogue_generation()
    """
    for table in TABLES
]

BACKWARD = [f"DROP TRIGGER IF EXISTS {table}_catalogue_generation ON {table}" for table in TABLES] + [
    "DROP FUNCTION IF EXISTS billing_new_catalogue_generation()",
    "DROP TABLE IF EXISTS billing_cataloguegeneration",
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_call_costs")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
