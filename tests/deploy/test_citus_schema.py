"""The migrated schema against the rules Citus sets for sharding by tenant (DESIGN §10, decision 024), read from
pg_catalog so that any later migration breaking them fails here, naming the table and the constraint.

Citus enforces a primary key or unique constraint of a distributed table only if it holds the distribution
column, and a foreign key between distributed tables only if both sides hold it at the same place; a reference
table may not refer to a distributed table, and a distributed table may refer to no plain local one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from billing import credit_notes, invoicing
from notifications import outbox, webhooks
from notifications.models import WebhookEndpoint
from tenants import citus
from tests.billing.builders import billed, finalize


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    kind: str  # "p" primary key, "u" unique (constraint or index), "f" foreign key
    columns: tuple[str, ...]
    target: str | None = None
    target_columns: tuple[str, ...] = ()


def tables() -> set[str]:
    """Every table of the public schema (a partitioned table once, not its partitions)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            """
        )
        return {name for (name,) in cursor.fetchall()}


def keys() -> list[Key]:
    """Primary keys, unique constraints, unique indexes (partial ones too) and foreign keys of public tables."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT r.relname, k.conname, k.contype,
                   ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(n, i)
                         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i),
                   t.relname,
                   ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(n, i)
                         JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i)
            FROM pg_constraint k
            JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
            LEFT JOIN pg_class t ON t.oid = k.confrelid
            WHERE n.nspname = 'public' AND k.contype IN ('p', 'u', 'f', 'x') AND NOT r.relispartition
            UNION ALL
            SELECT r.relname, c.relname, 'u',
                   ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS u(n, o)
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.n ORDER BY u.o),
                   NULL, ARRAY[]::name[]
            FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_class r ON r.oid = i.indrelid JOIN pg_namespace n ON n.oid = r.relnamespace
            WHERE n.nspname = 'public' AND i.indisunique AND NOT r.relispartition
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
            """
        )
        return [
            Key(table, name, "u" if kind == "x" else kind, tuple(columns), target, tuple(target_columns))
            for table, name, kind, columns, target, target_columns in cursor.fetchall()
        ]


def nullable_tenant_columns() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT table_name FROM information_schema.columns
            WHERE table_schema = 'public' AND column_name = %s AND is_nullable = 'YES'
            """,
            [citus.TENANT_COLUMN],
        )
        return {name for (name,) in cursor.fetchall()}


def key_violations(all_keys: list[Key], distributed: set[str], reference: set[str]) -> list[str]:
    """What Citus would refuse, one line per table and constraint."""
    column = citus.TENANT_COLUMN
    found = []
    primary = {key.table for key in all_keys if key.kind == "p"}
    found += [f"{table}: no primary key" for table in sorted(distributed - primary)]
    for key in all_keys:
        if key.table in distributed and key.kind in "pu" and column not in key.columns:
            found.append(f"{key.table}.{key.name}: {key.columns} lacks {column}")
        if key.kind != "f":
            continue
        target_kind = (
            "distributed"
            if key.target in distributed
            else "reference"
            if key.target in reference
            else "local"
        )
        if key.table in distributed and target_kind == "distributed":
            pairs = dict(zip(key.columns, key.target_columns, strict=True))
            if pairs.get(column) != column:
                found.append(
                    f"{key.table}.{key.name}: {key.columns} -> {key.target}{key.target_columns} "
                    f"does not pair {column} with {column}"
                )
        elif key.table in distributed and target_kind == "local":
            found.append(f"{key.table}.{key.name}: a distributed table refers to local {key.target}")
        elif key.table in reference and target_kind != "reference":
            found.append(f"{key.table}.{key.name}: a reference table refers to {target_kind} {key.target}")
        elif key.table not in distributed | reference and target_kind == "distributed":
            found.append(f"{key.table}.{key.name}: a local table refers to distributed {key.target}")
    return found


@pytest.mark.django_db
def test_every_table_is_classified():
    unknown = sorted(table for table in tables() if citus.kind_of(table) is None)
    assert not unknown, f"add these tables to tenants/citus.py (distributed, reference or local): {unknown}"


@pytest.mark.django_db
def test_every_classified_table_exists():
    listed = set(citus.DISTRIBUTED) | set(citus.REFERENCE) | set(citus.LOCAL)
    assert len(listed) == len(citus.DISTRIBUTED) + len(citus.REFERENCE) + len(citus.LOCAL), (
        "a table listed twice"
    )
    assert not sorted(listed - tables()), "tenants/citus.py lists tables the schema does not have"


@pytest.mark.django_db
def test_distributed_tables_hold_the_tenant_in_every_key():
    violations = key_violations(keys(), set(citus.DISTRIBUTED) & tables(), set(citus.REFERENCE))
    assert not violations, "\n".join(violations)


@pytest.mark.django_db
def test_distributed_tables_have_a_tenant_on_every_row():
    missing = set(citus.DISTRIBUTED) & tables()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = %s",
            [citus.TENANT_COLUMN],
        )
        missing -= {name for (name,) in cursor.fetchall()}
    nullable = set(citus.DISTRIBUTED) & nullable_tenant_columns()
    assert not missing and not nullable, (
        f"no {citus.TENANT_COLUMN}: {sorted(missing)}; nullable: {sorted(nullable)}"
    )


@pytest.mark.django_db
def test_tables_come_after_the_tables_they_refer_to():
    """create_reference_table and create_distributed_table refuse a table whose foreign keys name a table not yet
    turned into a reference or distributed one, so the plan's order matters."""
    for ordered in (citus.REFERENCE, citus.DISTRIBUTED):
        position = {table: n for n, table in enumerate(ordered)}
        late = [
            f"{key.table}.{key.name} -> {key.target}"
            for key in keys()
            if key.kind == "f"
            and key.table in position
            and position.get(key.target, -1) > position[key.table]
        ]
        assert not late, late


@pytest.mark.django_db(transaction=False)
def test_the_rules_catch_a_table_that_breaks_them():
    """The checker itself, on tables made for the purpose: each broken rule is reported by table and name."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                CREATE TABLE citus_probe_parent (id serial PRIMARY KEY, tenant_id int NOT NULL, code text UNIQUE);
                CREATE TABLE citus_probe_child (
                    id serial, tenant_id int NOT NULL, parent_id int REFERENCES citus_probe_parent (id),
                    PRIMARY KEY (tenant_id, id));
                CREATE TABLE citus_probe_catalogue (id serial PRIMARY KEY, child_id int, child_tenant_id int,
                    FOREIGN KEY (child_tenant_id, child_id) REFERENCES citus_probe_child (tenant_id, id));
                """
            )
        found = key_violations(
            [key for key in keys() if key.table.startswith("citus_probe_")],
            {"citus_probe_parent", "citus_probe_child"},
            {"citus_probe_catalogue"},
        )
        transaction.set_rollback(True)
    assert sorted(found) == sorted(
        [
            "citus_probe_parent.citus_probe_parent_pkey: ('id',) lacks tenant_id",
            "citus_probe_parent.citus_probe_parent_code_key: ('code',) lacks tenant_id",
            "citus_probe_child.citus_probe_child_parent_id_fkey: ('parent_id',) -> citus_probe_parent('id',) "
            "does not pair tenant_id with tenant_id",
            "citus_probe_catalogue.citus_probe_catalogue_child_tenant_id_child_id_fkey: "
            "a reference table refers to distributed citus_probe_child",
        ]
    )


def _migrate(targets=None):
    """Migrate to ``targets``, or every app forward to its latest migration."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


BEFORE_CITUS_KEYS = [
    ("tenants", "0005_agent_name_full_match"),
    ("billing", "0018_event_corrections"),
    ("notifications", "0002_webhooks"),
]


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_lines_and_deliveries_their_tenant_and_keeps_every_row():
    """An installation holding finalized invoices, credit notes and webhook deliveries of two tenants, taken
    back before the citus_keys migrations and forward again: every row is kept, and each line and delivery gets
    its invoice's, note's or event's tenant (though finalized lines are otherwise immutable)."""
    for _ in range(2):
        invoice = finalize(billed())
        credit_notes.issue(invoice.pk, outcome="reduce_due", reason="order_change", lines=None)
        WebhookEndpoint.objects.create(tenant_id=invoice.tenant_id, url="https://hooks.example.com/in")
        webhooks.fan_out(outbox.record(invoice.tenant_id, invoicing.INVOICE_FINALIZED, {"id": invoice.pk}))
    counted = """
        SELECT (SELECT count(*) FROM billing_invoiceline), (SELECT count(*) FROM billing_creditnoteline),
               (SELECT count(*) FROM notifications_webhookdelivery), (SELECT count(*) FROM tenants_agent)
    """
    with connection.cursor() as cursor:
        cursor.execute(counted)
        before = cursor.fetchone()
    assert all(before), before

    _migrate(BEFORE_CITUS_KEYS)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.columns WHERE column_name = 'tenant_id' AND table_name "
                "IN ('billing_invoiceline', 'billing_creditnoteline', 'notifications_webhookdelivery')"
            )
            assert cursor.fetchone() == (0,)
    finally:
        _migrate()

    with connection.cursor() as cursor:
        cursor.execute(counted)
        assert cursor.fetchone() == before
        cursor.execute(
            """
            SELECT (SELECT count(*) FROM billing_invoiceline l JOIN billing_invoice i ON i.id = l.invoice_id
                    WHERE l.tenant_id <> i.tenant_id),
                   (SELECT count(*) FROM billing_creditnoteline l JOIN billing_creditnote n ON n.id = l.credit_note_id
                    WHERE l.tenant_id <> n.tenant_id),
                   (SELECT count(*) FROM notifications_webhookdelivery d JOIN notifications_event e
                    ON e.id = d.event_id WHERE d.tenant_id <> e.tenant_id),
                   (SELECT count(DISTINCT tenant_id) FROM billing_invoiceline)
            """
        )
        assert cursor.fetchone() == (0, 0, 0, 2)
