"""The usage page and its CSV group: one row per meter, model, agent, session or day, with the quantity of each
meter and the cost, equal to the raw events priced by the plan; the CSV holds the page's rows."""

import csv
import html
import io
import re
from collections import defaultdict
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.billing.builders import M, make_plan, store, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory
from usage.meters import METER_NAMES

pytestmark = pytest.mark.django_db

# (provider, model, meter, unit amount, unit size): a plan of per-unit prices, so that the expected cost of a
# group can be worked out by hand: each (meter, provider, model) is billed once for the month, rounded to the
# cent, and a group's share is its quantity at that line's average price (docs/decisions/003); grouped by
# session, a group's cost is each call's own (its quantities at the list price, docs/decisions/017).
PRICES = [
    ("api.openai.com", "gpt-4o-mini", "llm_input_text_tokens", Decimal("0.30"), M),
    ("api.openai.com", "gpt-4o-mini", "llm_output_text_tokens", Decimal("1.20"), M),
    ("Deepgram", "nova-3", "stt_audio_seconds", Decimal("0.012"), Decimal(60)),
    ("Cartesia", "sonic-3", "tts_characters", Decimal("0.05"), Decimal(1000)),
]
MODELS = {
    ("api.openai.com", "gpt-4o-mini"): ["llm_input_text_tokens", "llm_output_text_tokens"],
    ("Deepgram", "nova-3"): ["stt_audio_seconds"],
    ("Cartesia", "sonic-3"): ["tts_characters"],
}
MONTH = date(2026, 3, 1)
GROUPS = ["meter", "model", "agent", "session", "day"]

events = st.lists(
    st.tuples(
        st.integers(0, 1),  # agent
        st.sampled_from(["s-1", "s-2", "s-3"]),
        st.integers(1, 31),  # day of March, tenant-local
        st.integers(0, 23),  # hour
        st.sampled_from(sorted(MODELS)),
        st.lists(st.integers(1, 3_000_000), min_size=2, max_size=2),
    ),
    min_size=1,
    max_size=12,
)


def plan():
    return make_plan(
        "linear",
        prices=[
            {
                "meter_id": meter,
                "provider": provider,
                "model_pattern": model,
                "unit_amount": a,
                "unit_size": s,
            }
            for provider, model, meter, a, s in PRICES
        ],
    )


def expected_groups(tenant, agents, sent, group_by):
    """Quantity per meter and cost of each group, from the events as sent and the plan's prices."""
    tz = ZoneInfo(tenant.timezone)
    rates = {(meter, provider, model): a / s for provider, model, meter, a, s in PRICES}
    line_quantity: dict[tuple, Decimal] = defaultdict(Decimal)
    grouped: dict[tuple, dict[tuple, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for agent, session, when, (provider, model), usage in sent:
        for meter, quantity in usage.items():
            line = (meter, provider, model)
            line_quantity[line] += quantity
            key = {
                "meter": (meter,),
                "model": (provider, model),
                "agent": (agents[agent].name,),
                "session": (session,),
                "day": (when.astimezone(tz).date().isoformat(),),
            }[group_by]
            grouped[key][line] += quantity
    amounts = {
        line: (q * rates[line]).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        for line, q in line_quantity.items()
    }
    result = {}
    for key, lines in grouped.items():
        per_meter: dict[str, Decimal] = defaultdict(Decimal)
        for (meter, _, _), q in lines.items():
            per_meter[meter] += q
        if group_by == "session":
            # each call's own cost: its usage at the marginal (here: list) price, unrounded (decision 017)
            cost = sum((q * rates[line] for line, q in lines.items()), Decimal(0))
        else:
            cost = sum((q * amounts[line] / line_quantity[line] for line, q in lines.items()), Decimal(0))
        result[key] = (dict(per_meter), cost)
    if group_by == "session":
        calls = sum((cost for _, cost in result.values()), Decimal(0))
        return result, calls.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return result, sum(amounts.values(), Decimal(0))


def page_table(page: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The usage table's header, body rows and footer as cell texts."""
    table = page.split('data-testid="usage-table">')[1].split("</table>")[0]

    def cells(fragment, tag):
        return [
            html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", fragment, re.S)
        ]

    body = table.split("<tbody>")[1].split("</tbody>")[0]
    rows = [cells(row, "td") for row in body.split("</tr>")[:-1]]
    return cells(table.split("</thead>")[0], "th"), rows, cells(table.split("<tfoot>")[1], "td")


def csv_rows(response) -> list[list[str]]:
    assert response.status_code == 200 and response.streaming
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def cents(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def number(text: str) -> Decimal:
    return Decimal(text.replace(",", "")) if text else Decimal(0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent_spec=events, group_by=st.sampled_from(GROUPS), tz=st.sampled_from(["UTC", "America/New_York"]))
def test_each_group_is_one_row_with_its_quantities_and_cost_and_the_csv_holds_the_same_rows(
    db, sent_spec, group_by, tz
):
    with transaction.atomic():
        tenant = TenantFactory(timezone=tz)
        agents = [AgentFactory(tenant=tenant, name=f"voice-{n}") for n in range(2)]
        subscribe(tenant, plan())
        client = Client()
        client.force_login(MembershipFactory(tenant=tenant).user)
        sent = []
        for n, (agent, session_name, day, hour, model, quantities) in enumerate(sent_spec):
            session = (
                f"{session_name}-a{agent}"  # a session belongs to the agent that reports it (DESIGN §11)
            )
            when = datetime.combine(date(2026, 3, day), time(hour, 7), ZoneInfo(tz))
            usage = dict(zip(MODELS[model], quantities, strict=False))
            store(agents[agent], when, usage, f"e-{n}", provider=model[0], model=model[1], session_id=session)
            sent.append((agent, session, when, model, {m: Decimal(q) for m, q in usage.items()}))
        expected, billed = expected_groups(tenant, agents, sent, group_by)

        query = f"start=2026-03-01&end=2026-03-31&group_by={group_by}"
        header, rows, footer = page_table(client.get(f"/usage/?{query}").content.decode())
        exported = csv_rows(client.get(f"/usage.csv?{query}"))
        transaction.set_rollback(True)

    # every group here has a price: the CSV's last column, the unpriced part of each row, is empty
    assert exported[0][-1] == "unpriced" and all(row[-1] == "" for row in exported[1:])
    exported = [row[:-1] for row in exported]

    width = 2 if group_by == "model" else 1
    meters = ["quantity"] if group_by == "meter" else exported[0][width:-2]
    assert exported[0][-2:] == ["cost", "currency"]
    assert len(rows) == len(expected) == len(exported) - 1  # one row per group, on the page and in the CSV
    micro = Decimal("0.000001")
    for page_row, csv_row in zip(rows, exported[1:], strict=True):
        key = tuple(csv_row[:width])
        quantities, cost = expected[key]
        shown = dict(zip(meters, (Decimal(q) if q else Decimal(0) for q in csv_row[width:-2]), strict=True))
        if group_by == "meter":
            assert shown == {"quantity": quantities[key[0]]}
        else:
            assert {m: q for m, q in shown.items() if q} == quantities
        assert abs(Decimal(csv_row[-2]) - cost) <= micro and csv_row[-1] == "USD"
        # the page shows the same group, quantities and cost (rounded to the cent)
        if group_by == "day":
            day = date.fromisoformat(key[0])
            assert page_row[0] == f"{day:%a} {day.day} {day:%b}"
        elif group_by == "meter":
            assert tuple(page_row[:width]) == (
                METER_NAMES[key[0]],
            )  # the page names it; the CSV has the code
        else:
            assert tuple(page_row[:width]) == key
        assert [number(c) for c in page_row[width:-1]] == list(shown.values())
        assert cents(page_row[-1]) == Decimal(csv_row[-2]).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert header[width:-1] == (["Quantity"] if group_by == "meter" else [METER_NAMES[m] for m in meters])
    # the groups add up to what the invoice charges for usage (by session: to the calls' own costs, which differ
    # from the invoice by its rounding: the dashboard's "rounding and period fees")
    assert cents(footer[-1]) == billed


def test_grouping_a_month_by_day_gives_one_row_per_day_with_usage(world, owner_client):
    tenant = world.tenants[0]
    header, rows, footer = page_table(owner_client.get("/usage/?group_by=day").content.decode())
    assert header[0] == "Day" and len(rows) == 1  # all of the world's usage is from today
    exported = [row[:-1] for row in csv_rows(owner_client.get("/usage.csv?group_by=day"))]
    assert [r[0] for r in exported[1:]] == [exported[1][0]] and exported[0][0] == "day"
    assert cents(footer[-1]) == cents(rows[0][-1])
    assert tenant.currency == exported[1][-1]


def test_the_csv_follows_the_filters_and_the_grouping(world, owner_client):
    by_agent = csv_rows(owner_client.get(f"/usage.csv?group_by=agent&agent={world.agents[0].pk}"))
    assert by_agent[0][0] == "agent" and [r[0] for r in by_agent[1:]] == [world.agents[0].name]
    by_meter = csv_rows(owner_client.get("/usage.csv?group_by=meter&meter=tts_characters"))
    assert [r[0] for r in by_meter[1:]] == ["tts_characters"]
    assert csv_rows(owner_client.get("/usage.csv?group_by=session&session=no-such-call")) == [
        ["session_id", "cost", "currency", "unpriced"]
    ]
