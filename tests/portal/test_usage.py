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
    response = owner_client.get("/usage.csv?group_by=session")
    assert response.status_code == 200 and response.streaming
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][0] == "session_id" and rows[0][-3:] == ["cost", "currency", "unpriced"]
    assert {"llm_input_text_tokens", "tts_characters"} <= set(rows[0])
    assert {r[0] for r in rows[1:]} == {"'+15550100", "call-0"}
    by_model = owner_client.get("/usage.csv?group_by=model")
    cells = {
        cell for row in csv.reader(io.StringIO(b"".join(by_model.streaming_content).decode())) for cell in row
    }
    assert "'=cmd|' /C calc'!A0" in cells and "=cmd|' /C calc'!A0" not in cells


def test_usage_filters_are_validated_and_bad_ones_never_500(world, owner_client):
    assert owner_client.get("/usage/?start=2026-13-45").status_code == 200
    assert owner_client.get("/usage/?agent=not-a-number").status_code == 200
    assert owner_client.get("/usage.csv?start=2026-05-01&end=2026-04-01").status_code == 400
    page = owner_client.get("/usage/?group_by=agent").content.decode()
    assert world.agents[0].name in page


@pytest.mark.parametrize(
    ("group_by", "head", "first_cell"),
    [
        ("meter", "Meter", "meter"),
        ("model", "Provider", "provider"),
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
    assert header[0] == head and header[-1] == "Cost"
    assert rows and all(len(cells) == len(header) for cells in rows)
    day = timezone.now().astimezone(ZoneInfo(world.tenants[0].timezone)).date()
    expected = {
        "agent": {world.agents[0].name},
        "day": {f"{day:%a} {day.day} {day:%b}"},
        "link": {'<a href="/sessions/call-0/">call-0</a>'},
        "meter": {"LLM text input tokens", "Text-to-speech characters"},  # names; the code on hover
        "provider": {"Deepgram", "Cartesia"},
    }[first_cell]
    assert expected <= {cells[0] for cells in rows}
    if group_by == "meter":
        assert '<td title="llm_input_text_tokens">LLM text input tokens</td>' in body
    else:
        assert '<span title="llm_input_text_tokens">LLM text input tokens</span>' in header


@pytest.mark.parametrize("group_by", ["model", "session"])
def test_usage_table_escapes_what_agents_sent(world, owner_client, group_by):
    AgentClient(world.keys[0]).post(
        "/api/v1/events",
        {"events": [event("x1", session_id="x1", provider="<b>p</b>", model="m&<")]},
    )
    page = owner_client.get(f"/usage/?group_by={group_by}").content.decode()
    assert "<b>p</b>" not in page and "m&<" not in page
    if group_by == "model":
        assert "<td>&lt;b&gt;p&lt;/b&gt;</td><td>m&amp;&lt;</td>" in page
    else:
        assert '<a href="/sessions/x1/">x1</a>' in page
