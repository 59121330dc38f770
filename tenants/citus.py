"""Which table Citus would distribute by tenant, which it would copy to every node, and which stay on the
coordinator: the one list the schema test (tests/deploy/test_citus_schema.py), `manage.py citus_plan` and
docs/operations.md read (DESIGN §10, decision 024).

Names only, no models: the list describes the migrated schema, including tables no model of this app owns.
"""

from __future__ import annotations

TENANT_COLUMN = "tenant_id"

# Hash-distributed by tenant_id and co-located with each other, so a tenant's rows of every table sit on one
# node and a tenant-scoped statement runs there whole.
DISTRIBUTED = (
    "tenants_agent",
    "tenants_apikey",
    "usage_session",
    "usage_usageevent",
    "usage_eventid",
    "usage_usagerollup",
    "usage_agentrollup",
    "billing_subscription",
    "billing_tenantgeneration",
    "billing_callcost",
    "billing_tierposition",
    "billing_tieredcharge",
    "billing_invoice",
    "billing_invoiceline",
    "billing_appliedcoupon",
    "billing_billingprofile",
    "billing_topup",
    "billing_creditnote",
    "billing_creditnoteline",
    "billing_creditgrant",
    "billing_ledgerentry",
    "spend_budget",
    "spend_budgetalert",
    "spend_spendpolicy",
    "spend_hold",
    "notifications_event",
    "notifications_webhookendpoint",
    "notifications_webhookdelivery",
)

# Copied whole to every node: small, read by every tenant's statements, written rarely, and some hold a key that
# must be unique across tenants (a tenant's slug, a coupon code, a user name), which only a table on one shard
# can enforce. Listed so that a table comes after every table it refers to (the order to create them in).
REFERENCE = (
    "django_content_type",
    "auth_permission",
    "auth_group",
    "auth_group_permissions",
    "auth_user",
    "auth_user_groups",
    "auth_user_user_permissions",
    "tenants_tenant",
    "tenants_membership",
    "tenants_invitation",
    "usage_meter",
    "billing_cataloguegeneration",
    "billing_priceplan",
    "billing_planversion",
    "billing_price",
    "billing_pricetier",
    "billing_providerrate",
    "billing_taxrate",
    "billing_coupon",
    "billing_planauditentry",
    "billing_invoicenumbersequence",
)

# Left on the coordinator as plain PostgreSQL tables: the platform's own bookkeeping (sessions, migrations,
# admin log, login throttling, the archived months of raw events: usage.archive) and Stripe's webhook inbox,
# none of which a tenant's statement reads.
LOCAL = (
    "django_migrations",
    "django_session",
    "django_admin_log",
    "axes_accessattempt",
    "axes_accessattemptexpiration",
    "axes_accessfailurelog",
    "axes_accesslog",
    "payments_stripeevent",
    "usage_eventarchive",
)


def kind_of(table: str) -> str | None:
    """ "distributed", "reference", "local", or None for a table the list does not know."""
    for kind, tables in (("distributed", DISTRIBUTED), ("reference", REFERENCE), ("local", LOCAL)):
        if table in tables:
            return kind
    return None


def distribution_statements() -> list[str]:
    """The SQL that turns a migrated single-node database into a Citus one, in an order Citus accepts: reference
    tables first (a distributed table's foreign keys to them must find them distributed), then the distributed
    tables, each co-located with the first."""
    statements = ["CREATE EXTENSION IF NOT EXISTS citus;"]
    statements += [f"SELECT create_reference_table('{table}');" for table in REFERENCE]
    first, *others = DISTRIBUTED
    statements.append(f"SELECT create_distributed_table('{first}', '{TENANT_COLUMN}');")
    statements += [
        f"SELECT create_distributed_table('{table}', '{TENANT_COLUMN}', colocate_with => '{first}');"
        for table in others
    ]
    return statements


def tenant_primary_key(table: str, references: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The SQL (forward, backward) of the `citus_keys` migrations for one distributed table: its primary key
    becomes (tenant_id, id) and each column of ``references`` (column -> table) a foreign key paired with the
    tenant, as Citus's guide for Django advises; Django keeps ``id`` as the model's pk (ids still come from one
    sequence, so they stay unique). The old key is dropped with CASCADE: whatever foreign key still names
    ``(id)`` alone cannot outlive it, and the migration of the table holding it adds it back paired.

    Used by migrations: changing it changes what they do."""
    references = references or {}
    # the table names are the migrations' own constants
    drop_key = f"""
        DO $$ BEGIN
            EXECUTE (SELECT format('ALTER TABLE {table} DROP CONSTRAINT %I CASCADE', conname)
                     FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p');
        END $$
    """  # noqa: S608
    forward = [drop_key, f"ALTER TABLE {table} ADD PRIMARY KEY ({TENANT_COLUMN}, id)"] + [
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_same_tenant FOREIGN KEY ({TENANT_COLUMN}, {column}) "
        f"REFERENCES {target} ({TENANT_COLUMN}, id) DEFERRABLE INITIALLY DEFERRED"
        for column, target in references.items()
    ]
    backward = [
        f"ALTER TABLE {table} DROP CONSTRAINT {table}_{column}_same_tenant" for column in references
    ] + [
        drop_key,
        f"ALTER TABLE {table} ADD PRIMARY KEY (id)",
    ]
    return forward, backward
