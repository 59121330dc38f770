# Per tenant, a token that changes whenever what its unbilled usage is priced from changes, besides the catalogue
# (0008, 0015): its usage (the per-agent rollups pricing reads) and its invoices (drafts, finalization, voids:
# which periods are still unbilled and what finalized ones billed). Spend control caches the priced unbilled
# usage per process behind (catalogue token, this token), so a balance read after an accepted batch prices it
# again and every other read prices nothing (decision 018).
#
# Statement-level triggers with transition tables: one upsert per statement and tenant, whatever writes
# (ingest's one statement, corrections, rebuilds, the admin, raw SQL). A value from a sequence, never reused,
# even when the transaction that drew it rolls back, so a cached price can never be mistaken for another state.
# The row a writer upserts stays locked until it commits, so each tenant has eight rows and a writer takes the
# one of its database backend (pid modulo 8): concurrent ingest of one tenant rarely waits on another, and a
# reader reads every slot (any commit changes one of them).
# A tenant without a row has never had usage or an invoice (its token reads as 0). TRUNCATE (tests' flush) drops
# every row and draws a new catalogue token too, so no state read before it can be mistaken for one after it.

from django.db import migrations

TABLES = ["usage_agentrollup", "billing_invoice"]

FORWARD = [
    "CREATE SEQUENCE billing_tenantgeneration_seq",
    """
    CREATE TABLE billing_tenantgeneration (
        tenant_id bigint NOT NULL,  -- no foreign key: Django's flush truncates tenants without this table
        slot smallint NOT NULL CHECK (slot >= 0 AND slot < 8),
        token bigint NOT NULL,
        PRIMARY KEY (tenant_id, slot)
    )
    """,
    """
    CREATE FUNCTION billing_new_tenant_generation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO billing_tenantgeneration (tenant_id, slot, token)
        SELECT tenant_id, pg_backend_pid() % 8, nextval('billing_tenantgeneration_seq')
        FROM (SELECT DISTINCT tenant_id FROM changed ORDER BY tenant_id) AS tenants
        ON CONFLICT (tenant_id, slot) DO UPDATE SET token = EXCLUDED.token;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION billing_forget_tenant_generations() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM billing_tenantgeneration;
        INSERT INTO billing_cataloguegeneration (id, token) VALUES (1, gen_random_uuid())
        ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token;
        RETURN NULL;
    END
    $$
    """,
]
for table in TABLES:
    for event, rows in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        FORWARD.append(
            f"""
            CREATE TRIGGER {table}_tenant_generation_{event.lower()}
            AFTER {event} ON {table} REFERENCING {rows} TABLE AS changed
            FOR EACH STATEMENT EXECUTE FUNCTION billing_new_tenant_generation()
            """
        )
    FORWARD.append(
        f"""
        CREATE TRIGGER {table}_tenant_generation_truncate AFTER TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION billing_forget_tenant_generations()
        """
    )

BACKWARD = [
    f"DROP TRIGGER IF EXISTS {table}_tenant_generation_{event} ON {table}"
    for table in TABLES
    for event in ("insert", "update", "delete", "truncate")
] + [
    "DROP FUNCTION IF EXISTS billing_forget_tenant_generations()",
    "DROP FUNCTION IF EXISTS billing_new_tenant_generation()",
    "DROP TABLE IF EXISTS billing_tenantgeneration",
    "DROP SEQUENCE IF EXISTS billing_tenantgeneration_seq",
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0015_catalogue_generation_terms"), ("usage", "0010_usageevent_gaps_index")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
