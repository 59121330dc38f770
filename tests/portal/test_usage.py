"""The usage page and its CSV export: filters, the table's cells and escaping, formula-safe CSV."""

import csv
import io
import re
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from tests.conftest import AgentClient
from tests.usage.builders import event

pytestmark = pytest.mark.django_db


def test_csv_export_streams_rows_and_neutralises_formulas(world, owner_client):
    # a caller's number is a valid session id and a formula to a spreadsheet; a provider may be any text
    AgentClient(world.keys[0]).post(
        "/api/v1/events",
        {"events": [event("f1", session_id="+15550100", provider="=cmd|' /C calc'!A0")]},
    )
    response = owner_client.get("/usage.csv")
    assert response.status_code == 200 and response.streaming
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:5] == ["hour_start", "agent", "session_id", "meter", "provider"]
    assert any(r[2] == "'+15550100" and r[4] == "'=cmd|' /C calc'!A0" for r in rows[1:])
    assert {r[3] for r in rows[1:]} >= {"llm_input_text_tokens", "tts_characters"}


def test_usage_filters_are_validated_and_bad_ones_never_500(world, owner_client):
    assert owner_client.get("/usage/?start=2026-13-45").status_code == 200
    assert owner_client.get("/usage/?agent=not-a-number").status_code == 200
    assert owner_client.get("/usage.csv?start=2026-05-01&end=2026-04-01").status_code == 400
    page = owner_client.get("/usage/?group_by=agent").content.decode()
    assert world.agents[0].name in page


@pytest.mark.parametrize(
    ("group_by", "head", "first_cell"),
    [
        ("meter", None, None),
        ("agent", "Agent", "agent"),
        ("day", "Day", "day"),
        ("session", "Session", "link"),
    ],
)
def test_usage_table_has_one_cell_per_column_and_the_grouping_first(
    world, owner_client, group_by, head, first_cell
):
    page = owner_client.get(f"/usage/?group_by={group_by}").content.decode()
    table = page.split('data-testid="usage-table">')[1].split("</table>")[0]
    header = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table.split("</thead>")[0])
    body = table.split("<tbody>")[1].split("</tbody>")[0]
    rows = [re.findall(r"<td(?:\s[^>]*)?>(.*?)</td>", row, re.S) for row in body.split("</tr>")[:-1]]
    assert header[: 1 if head else 0] == ([head] if head else [])
    assert header[-6:] == ["Meter", "Provider", "Model", "Quantity", "Events", "Cost"]
    assert rows and all(len(cells) == len(header) for cells in rows)
    day = timezone.now().astimezone(ZoneInfo(world.tenants[0].timezone)).date()
    expected = {
        "agent": world.agents[0].name,
        "day": f"{day:%a} {day.day} {day:%b}",
        "link": '<a href="/sessions/call-0/">call-0</a>',
    }.get(first_cell)
    if expected:
        assert {cells[0] for cells in rows} == {expected}
    assert "<code>llm_input_text_tokens</code>" in {cells[-6] for cells in rows}


@pytest.mark.parametrize("group_by", ["meter", "session"])
def test_usage_table_escapes_what_agents_sent(world, owner_client, group_by):
    AgentClient(world.keys[0]).post(
        "/api/v1/events",
        {"events": [event("x1", session_id="x1", provider="<b>p</b>", model="m&<")]},
    )
    page = owner_client.get(f"/usage/?group_by={group_by}").content.decode()
    assert "<b>p</b>" not in page and "m&<" not in page
    assert "&lt;b&gt;p&lt;/b&gt;" in page and "m&amp;&lt;" in page
