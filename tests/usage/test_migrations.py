"""usage.0004 creates the per-agent rollups and fills them from the per-session ones a running system has."""

from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.usage.builders import event, totals
from usage.rollups import rollup_drift

BEFORE = [("usage", "0003_portal_read_indexes")]


def _migrate(targets=None):
    """Migrate usage to ``targets``, or every app forward to its latest migration (going back in usage also
    unapplies what depends on it in other apps, such as billing's triggers on the rollups)."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_migration_backfills_per_agent_rollups_exactly(tenant, agent, agent_client):
    # Usage stored by the current code, then the per-agent table taken away as before 0004…
    for n, session in enumerate(["a", "a", "b", "c"]):
        body = {"events": [event(f"e{n}-{i}", session_id=session) for i in range(3)]}
        assert agent_client.post("/api/v1/events", body).status_code == 200
    before = totals(tenant)
    _migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('usage_agentrollup')")
            assert cursor.fetchone() == (None,)
    finally:
        # …and forward again: 0004 rebuilds it from usage_usagerollup.
        _migrate()

    assert totals(tenant) == before  # asserts both tables agree
    assert before[("llm_input_text_tokens", "api.openai.com", "gpt-4o-mini")] == Decimal(12 * 1200)
    assert rollup_drift(tenant.pk) == []
