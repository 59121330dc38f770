"""Every statement a representative day runs — a batch ingested through the API, the portal's usage, sessions
and invoice pages, an invoice generated and finalized, its PDF, a credit note on it and the note's pages — names the tenant of each distributed table it reads or
writes, so Citus can route it to the one node holding that tenant (DESIGN §10, decision 024)."""

from __future__ import annotations

import re

import pytest
from django.db import connection

from billing import credit_notes, invoicing
from tenants import citus
from tests.conftest import AgentClient
from tests.usage.builders import event

TABLES = "|".join(citus.DISTRIBUTED)
QUOTED = re.compile(rf'"({TABLES})"(?:\s+(?:AS\s+)?([A-Z]\d+))?')
BARE = re.compile(rf"\b({TABLES})\b")
INSERT = re.compile(r'^INSERT INTO "?(\w+)"? \(([^)]*)\)')
# A hand-written join: the table, and its ON condition (up to the next JOIN, WHERE, GROUP, ORDER or closing paren).
JOIN = re.compile(
    rf"\bJOIN ({TABLES})\b(?:\s+(?:AS\s+)?\w+)?\s+ON\s+(.*?)(?=\bJOIN\b|\bWHERE\b|\bGROUP\b|\bORDER\b|\)|$)",
    re.S,
)


# The one statement allowed to leave its tenant out: the read that finds the tenant of a row known by its id
# alone (``TenantScopedQuerySet.lock``), unlocked, before the statement that names it. Citus runs it on every node.
TENANT_LOOKUP = re.compile(
    r'^SELECT "(\w+)"\."tenant_id" AS "tenant_id" FROM "\1" WHERE "\1"\."id" = %s LIMIT 1$'
)


def unscoped_tables(sql: str) -> set[str]:
    """The distributed tables ``sql`` reads or writes without naming their tenant: an ORM statement must compare
    each table's (or its alias's) tenant_id, an INSERT must set it; a hand-written one must mention tenant_id.
    A textual check, stricter than it needs to be rather than looser: a statement it flags names the table
    without its tenant_id column anywhere."""
    if TENANT_LOOKUP.match(sql):
        return set()
    insert = INSERT.match(sql)
    if insert and insert.group(1) in citus.DISTRIBUTED and "tenant_id" not in insert.group(2):
        return {insert.group(1)}
    inserted = {insert.group(1)} if insert else set()
    quoted = list(QUOTED.finditer(sql))
    if not quoted:
        # A hand-written statement must mention tenant_id, and join each distributed table on its tenant too: a
        # join on the id alone is one Citus cannot run on each node (the tables are co-located by tenant).
        misjoined = {table for table, condition in JOIN.findall(sql) if "tenant_id" not in condition}
        return (set() if "tenant_id" in sql else set(BARE.findall(sql)) - inserted) | misjoined
    # An ORM SELECT lists every column it reads, tenant_id among them, and the ORM's joins pair columns, never a
    # tenant: only its conditions can scope it, from its first WHERE on.
    scoping = sql[sql.index(" WHERE ") :] if " WHERE " in sql else ""
    return {
        table
        for table, alias in (match.groups() for match in quoted)
        if f'"{table}"."tenant_id"' not in scoping and not (alias and f'{alias}."tenant_id"' in scoping)
    } - inserted


class Recorder:
    """Every statement run while it wraps the connection."""

    def __init__(self):
        self.statements: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        self.statements.append(sql)
        return execute(sql, params, many, context)


@pytest.mark.django_db
def test_a_day_of_ingest_portal_pages_and_invoicing_names_the_tenant_in_every_statement(world, client):
    tenant, agent_key = world.tenants[0], world.keys[0]
    client.force_login(world.users[0])
    recorder = Recorder()
    with connection.execute_wrapper(recorder):
        response = AgentClient(agent_key).post(
            "/api/v1/events", {"events": [event(f"q-{n}") for n in range(3)]}
        )
        assert response.status_code == 200
        assert client.get("/usage/").status_code == 200
        assert client.get("/sessions/").status_code == 200
        assert client.get("/invoices/").status_code == 200
        assert client.get(f"/invoices/{world.invoices[0].pk}/").status_code == 200
        _, end = invoicing.current_period(tenant)
        finalized = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, end).pk, force=True)
        # the finalized invoice's documents, and a credit note on it with its own
        assert client.get(f"/invoices/{finalized.pk}/pdf/").status_code == 200
        note = credit_notes.issue(finalized.pk, outcome="reduce_due", reason="duplicate")
        assert client.get(f"/credit-notes/{note.pk}/").status_code == 200
        assert client.get(f"/credit-notes/{note.pk}/pdf/").status_code == 200
    touching = [sql for sql in recorder.statements if BARE.search(sql)]
    assert len(touching) > 20, "the flow ran"
    unscoped = [
        f"{sorted(unscoped_tables(sql))}: {sql[sql.find(' FROM ') :][:400]}"
        for sql in touching
        if unscoped_tables(sql)
    ]
    assert not unscoped, "\n".join(unscoped)


@pytest.mark.parametrize(
    ("sql", "unscoped"),
    [
        (
            'SELECT "billing_invoice"."id" FROM "billing_invoice" WHERE "billing_invoice"."id" = %s',
            {"billing_invoice"},
        ),
        (
            'SELECT "billing_invoice"."id" FROM "billing_invoice" WHERE "billing_invoice"."tenant_id" = %s',
            set(),
        ),
        (
            'SELECT "billing_invoice"."id" FROM "billing_invoice" WHERE "billing_invoice"."tenant_id" = %s AND '
            'EXISTS(SELECT 1 FROM "billing_invoiceline" U1 WHERE U1."invoice_id" = ("billing_invoice"."id"))',
            {"billing_invoiceline"},
        ),
        (
            'INSERT INTO "billing_invoiceline" ("invoice_id", "position") VALUES (%s, %s)',
            {"billing_invoiceline"},
        ),
        ('INSERT INTO "billing_invoiceline" ("tenant_id", "invoice_id") VALUES (%s, %s)', set()),
        ("DELETE FROM billing_invoiceline WHERE invoice_id = %s", {"billing_invoiceline"}),
        ("DELETE FROM billing_invoiceline WHERE tenant_id = %s AND invoice_id = %s", set()),
        ('SELECT "usage_meter"."code" FROM "usage_meter"', set()),
        (
            'SELECT "billing_invoice"."tenant_id" AS "tenant_id" FROM "billing_invoice" WHERE "billing_invoice"."id" = %s LIMIT 1',
            set(),
        ),
        (
            'SELECT "billing_invoice"."tenant_id" AS "tenant_id" FROM "billing_invoice" WHERE "billing_invoice"."id" = %s '
            "LIMIT 1 FOR UPDATE",
            {"billing_invoice"},
        ),
        (
            "SELECT k.id FROM tenants_apikey k JOIN tenants_agent a ON a.id = k.agent_id "
            "JOIN tenants_tenant t ON t.id = k.tenant_id WHERE k.key_id = %s",
            {"tenants_agent"},
        ),
        (
            "SELECT k.id FROM tenants_apikey k JOIN tenants_agent a ON a.tenant_id = k.tenant_id AND a.id = "
            "k.agent_id JOIN tenants_tenant t ON t.id = k.tenant_id WHERE k.key_id = %s",
            set(),
        ),
        (
            'SELECT "billing_invoiceline"."id", "billing_invoiceline"."tenant_id" FROM "billing_invoiceline" '
            'WHERE "billing_invoiceline"."invoice_id" = %s',
            {"billing_invoiceline"},
        ),
        (
            'SELECT "billing_invoiceline"."id", "billing_invoiceline"."tenant_id" FROM "billing_invoiceline" '
            'WHERE ("billing_invoiceline"."invoice_id" = %s AND "billing_invoiceline"."tenant_id" = %s)',
            set(),
        ),
    ],
)
def test_the_check_tells_a_scoped_statement_from_an_unscoped_one(sql, unscoped):
    assert unscoped_tables(sql) == unscoped
