"""Identifiers stored before ingest checked their alphabet (issue 12) — newlines, slashes, ``?``, ``#``, ``%``,
spaces, markup, 128 characters, any Unicode — render escaped and link on every page, the CSV and the PDF."""

import csv
import html
import io
import re
from datetime import timedelta
from decimal import Decimal
from io import BytesIO

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from billing import invoicing
from tests.billing.builders import M, make_plan, subscribe
from tests.factories import AgentFactory, MembershipFactory, TenantFactory
from usage.models import AgentRollup, Session, UsageEvent, UsageRollup

pytestmark = pytest.mark.django_db

# Anything PostgreSQL text can hold (no NUL, no lone surrogates), up to the columns' 128 characters.
identifiers = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=128),
    st.sampled_from(["a\nb", "..", ".", "a/../b", "?x=1#y", "100%", "%2F", " ", "<script>alert(1)</script>"]),
)


def legacy_session(session_id: str, end_user: str, agent_name: str, model: str):
    """A session with one event and its rollups, written straight into the tables as an old version
    of the API would have stored them (no validation)."""
    tenant = TenantFactory(timezone="UTC")
    agent = AgentFactory(tenant=tenant, name=agent_name)
    prices = [{"meter_id": "llm_input_text_tokens", "unit_amount": Decimal("0.30"), "unit_size": M}]
    subscribe(tenant, make_plan(f"any-{tenant.slug}", prices=prices))
    now = timezone.now() - timedelta(minutes=5)
    hour = now.replace(minute=0, second=0, microsecond=0)
    Session.objects.create(
        tenant=tenant,
        agent=agent,
        session_id=session_id,
        end_user_id=end_user,
        metadata={session_id: end_user},
        first_usage_at=now,
        last_usage_at=now,
    )
    usage = {"llm_input_text_tokens": "1234"}
    UsageEvent.objects.create(
        tenant=tenant,
        agent=agent,
        event_id=session_id,
        timestamp=now,
        session_id=session_id,
        provider="legacy",
        model=model,
        usage=usage,
        metadata={end_user: session_id},
    )
    rollup = {"tenant": tenant, "agent": agent, "meter": "llm_input_text_tokens", "provider": "legacy"}
    rollup |= {"model": model, "hour": hour, "quantity": Decimal(1234), "event_count": 1}
    UsageRollup.objects.create(session_id=session_id, **rollup)
    AgentRollup.objects.create(**rollup)
    return tenant


def csv_cell(value: str) -> str:
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(session_id=identifiers, end_user=identifiers, agent_name=identifiers, model=identifiers)
@example(session_id="call\n1", end_user="u/1?#%", agent_name="<b>bot</b>", model="gemini-2.5-flash")
@example(session_id="é" * 128, end_user=" ", agent_name="🤖", model="x" * 128)
def test_every_page_csv_and_pdf_answers_and_escapes_stored_identifiers(
    db, session_id, end_user, agent_name, model
):
    with transaction.atomic():
        tenant = legacy_session(session_id, end_user, agent_name[:100], model)
        client = Client()
        client.force_login(MembershipFactory(tenant=tenant).user)
        escaped = html.escape(session_id)

        listed = client.get("/sessions/")
        assert listed.status_code == 200
        page = listed.content.decode()
        assert escaped in page and html.escape(end_user) in page
        links = re.findall(r'<a href="(/sessions/[^"]+)">', page)
        assert len(links) == 1
        detail = client.get(html.unescape(links[0]))  # the link the page gives, as a browser follows it
        assert detail.status_code == 200, links[0]
        assert f"Session <code>{escaped}</code>" in detail.content.decode()

        for group_by in ("session", "agent", "model"):
            usage = client.get(f"/usage/?group_by={group_by}")
            assert usage.status_code == 200
            text = usage.content.decode()
            if group_by == "session":
                assert f'<a href="{links[0]}">{escaped}</a>' in text
            assert {"session": escaped, "agent": html.escape(agent_name[:100]), "model": html.escape(model)}[
                group_by
            ] in text
        exported = client.get("/usage.csv?group_by=session")
        assert exported.status_code == 200
        rows = list(csv.reader(io.StringIO(b"".join(exported.streaming_content).decode(), newline="")))
        assert [row[0] for row in rows[1:]] == [csv_cell(session_id)]

        start, _ = invoicing.current_period(tenant)
        invoice = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, start).pk, force=True)
        assert client.get(f"/invoices/{invoice.pk}/").status_code == 200
        assert client.get(f"/invoices/{invoice.pk}/print/").status_code == 200
        pdf = client.get(f"/invoices/{invoice.pk}/pdf/")
        assert pdf.status_code == 200
        text = "".join(page.extract_text() for page in PdfReader(BytesIO(pdf.content)).pages)
        if model.isascii() and model.isprintable():
            assert re.sub(r"\s", "", model) in re.sub(r"\s", "", text)
        transaction.set_rollback(True)


@pytest.mark.parametrize("path", ["/sessions/%00/", "/sessions/a%00b/", "/sessions/%2500/"])
def test_a_session_path_no_stored_id_can_have_is_not_found(owner_client, path):
    assert owner_client.get(path).status_code == 404
