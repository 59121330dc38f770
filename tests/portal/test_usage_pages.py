"""The usage explorer by session a page at a time (a large tenant's month has 10⁵ sessions): 50 sessions a page
in session id order, with links to the next page, the range's totals below, and a CSV of every session that is
streamed a read at a time. Amounts are checked against the events' quantities at the plan's price."""

import csv
import html
import io
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from billing.models import CallCost
from portal.views import usage as usage_view
from tenants.models import Tenant
from tests.billing.builders import make_plan, store_calls, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db

RATE = Decimal("0.012") / 60  # Deepgram nova-3, per second of audio
STT = {"meter_id": "stt_audio_seconds", "provider": "Deepgram", "model_pattern": "nova-3"}
SESSIONS = 120
MONTH = "start=2026-03-01&end=2026-03-31"


@pytest.fixture
def calls(client):
    """A tenant with SESSIONS calls in March 2026, call-000 … call-119, call n with n + 1 seconds of audio, and a
    logged-in owner; returns the expected (quantity, cost) of each call."""
    agent = AgentFactory(tenant=TenantFactory(timezone="UTC"))
    subscribe(agent.tenant, make_plan(prices=[{**STT, "unit_amount": Decimal("0.012"), "unit_size": 60}]))
    seconds = {f"call-{n:03d}": n + 1 for n in range(SESSIONS)}
    store_calls(agent, datetime(2026, 3, 10, 12, tzinfo=UTC), seconds)
    client.force_login(MembershipFactory(tenant=agent.tenant).user)
    return {session: (Decimal(q), q * RATE) for session, q in seconds.items()}


def table(page: str) -> tuple[list[list[str]], list[str]]:
    """The usage table's body rows and footer cells as texts."""
    part = page.split('data-testid="usage-table">')[1].split("</table>")[0]

    def cells(fragment):
        found = re.findall(r"<td(?:\s[^>]*)?>(.*?)</td>", fragment, re.S)
        return [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in found]

    body = part.split("<tbody>")[1].split("</tbody>")[0]
    return [cells(row) for row in body.split("</tr>")[:-1]], cells(part.split("<tfoot>")[1])


def next_link(page: str) -> str | None:
    found = re.search(r'<a href="\?([^"]*)" data-testid="usage-next">', page)
    return html.unescape(found.group(1)) if found else None


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def money(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def test_by_session_the_explorer_shows_fifty_sessions_a_page_and_the_pages_hold_every_session_once(
    client, calls
):
    pages, query = [], f"group_by=session&{MONTH}"
    while query is not None:
        response = client.get(f"/usage/?{query}")
        assert response.status_code == 200
        page = response.content.decode()
        pages.append(table(page))
        query = next_link(page)
    assert [len(rows) for rows, _ in pages] == [50, 50, 20]
    shown = [row for rows, _ in pages for row in rows]
    assert [row[0] for row in shown] == sorted(calls)  # in session id order, each once
    for session, quantity, cost in shown:
        expected_quantity, expected_cost = calls[session]
        assert Decimal(quantity.replace(",", "")) == expected_quantity
        assert money(cost) == cents(expected_cost)
    all_quantity = sum(q for q, _ in calls.values())
    all_cost = cents(sum(c for _, c in calls.values()))
    for rows, footer in pages:
        page_label, page_quantity, page_cost, all_label, quantity, cost = footer
        assert page_label == f"These {len(rows)} sessions"
        assert Decimal(page_quantity.replace(",", "")) == sum(calls[r[0]][0] for r in rows)
        assert money(page_cost) == cents(sum(calls[r[0]][1] for r in rows))
        # the whole month's totals on every page: quantities from the per-agent rollups, Σ per-call costs
        assert (all_label, Decimal(quantity.replace(",", "")), money(cost)) == (
            "All sessions",
            all_quantity,
            all_cost,
        )


def test_a_range_that_is_not_whole_periods_gives_the_quantities_of_all_sessions_but_not_their_cost(
    client, calls
):
    page = client.get("/usage/?group_by=session&start=2026-03-01&end=2026-03-20").content.decode()
    _, footer = table(page)
    assert footer[3:5] == ["All sessions", f"{sum(q for q, _ in calls.values()):,}"]
    assert footer[5] == "—"


def test_one_page_of_sessions_has_one_total_row_and_no_page_links(client, calls):
    page = client.get(f"/usage/?group_by=session&session=call-007&{MONTH}").content.decode()
    rows, footer = table(page)
    assert [row[0] for row in rows] == ["call-007"] and footer[0] == "Total"
    assert money(footer[-1]) == cents(calls["call-007"][1])
    assert 'data-testid="usage-pager"' not in page


def test_a_page_after_the_last_session_or_after_a_nul_is_a_page_not_an_error(client, calls):
    assert "No usage matches" in client.get(f"/usage/?group_by=session&{MONTH}&after=zzz").content.decode()
    rows, _ = table(client.get(f"/usage/?group_by=session&{MONTH}&after=%00").content.decode())
    assert rows[0][0] == "call-000"  # the first page


def csv_body(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_csv_by_session_streams_every_session_a_read_at_a_time(client, calls, monkeypatch):
    monkeypatch.setattr(usage_view, "CSV_SESSIONS_PER_READ", 7)
    response = client.get(f"/usage.csv?group_by=session&{MONTH}")
    assert response.status_code == 200 and response.streaming
    with CaptureQueriesContext(connection) as reads:
        chunks = iter(response.streaming_content)
        head, first = next(chunks), next(chunks)
    # the header and first row are sent after one read of sessions, not after reading them all
    assert head.startswith(b"session_id,stt_audio_seconds,cost") and first.startswith(b"call-000,1,")
    assert sum("SELECT DISTINCT session_id" in q["sql"] for q in reads.captured_queries) == 1
    rows = list(csv.reader(io.StringIO((head + first + b"".join(chunks)).decode())))[1:]
    assert [row[0] for row in rows] == sorted(calls)
    for session, quantity, cost, currency, unpriced in rows:
        assert (Decimal(quantity), Decimal(cost), currency, unpriced) == (
            calls[session][0],
            calls[session][1].quantize(Decimal("0.000001")),
            "USD",
            "",
        )
    assert sum(Decimal(row[2]) for row in rows) == sum(c for _, c in calls.values())


def test_the_csv_follows_the_filters_by_session_too(client, calls):
    rows = csv_body(
        client.get("/usage.csv?group_by=session&session=call-041&start=2026-03-01&end=2026-03-31")
    )
    assert rows[1][:3] == ["call-041", "42", format(calls["call-041"][1].quantize(Decimal("0.000001")), "f")]
    assert len(rows) == 2


def test_the_total_of_all_sessions_follows_a_new_call_and_a_rebuild_at_once(client, calls):
    def all_sessions_cost() -> Decimal:
        _, footer = table(client.get(f"/usage/?group_by=session&{MONTH}").content.decode())
        return money(footer[-1])

    before = sum(c for _, c in calls.values())
    assert all_sessions_cost() == cents(before)  # and now cached in this process
    tenant = Tenant.objects.get(agents__sessions__session_id="call-000")
    store_calls(tenant.agents.get(), datetime(2026, 3, 11, tzinfo=UTC), {"call-late": 3000})
    assert all_sessions_cost() == cents(before + 3000 * RATE)
    # whatever else writes call costs alone (a rebuild: manage.py rebuild_call_costs) is seen at once too
    CallCost.objects.filter(tenant=tenant, session_id="call-late").update(cost=F("cost") + 1)
    assert all_sessions_cost() == cents(before + 3000 * RATE + 1)
