"""``manage.py citus_plan`` prints each classified table's statement once, reference tables before distributed
ones, every distributed table co-located with the first; docs/operations.md carries the same output."""

from io import StringIO
from pathlib import Path

from django.core.management import call_command

from tenants import citus


def plan() -> list[str]:
    out = StringIO()
    call_command("citus_plan", stdout=out)
    return out.getvalue().splitlines()


def test_the_plan_creates_the_extension_then_reference_then_colocated_distributed_tables():
    lines = plan()
    assert lines[0] == "CREATE EXTENSION IF NOT EXISTS citus;"
    reference = [line for line in lines if "create_reference_table" in line]
    distributed = [line for line in lines if "create_distributed_table" in line]
    assert len(lines) == 1 + len(reference) + len(distributed)
    assert reference == [f"SELECT create_reference_table('{table}');" for table in citus.REFERENCE]
    assert lines.index(reference[-1]) < lines.index(distributed[0])
    assert distributed[0] == "SELECT create_distributed_table('tenants_agent', 'tenant_id');"
    assert all(line.endswith("colocate_with => 'tenants_agent');") for line in distributed[1:])
    named = {line.split("'")[1] for line in distributed}
    assert named == set(citus.DISTRIBUTED)
    assert not any(table in line for line in lines for table in citus.LOCAL)


def test_operations_guide_shows_the_plan_as_the_command_prints_it():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert "\n".join(plan()) in guide
