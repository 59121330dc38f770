"""Fixtures of the billing admin tests: a superuser's client, a plan, a draft with usage and a locked version."""

import pytest

from billing import invoicing
from tests.billing.admin.pages import post_session
from tests.billing.builders import make_plan, subscribe
from tests.factories import UserFactory


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def plan(db):
    return make_plan()


@pytest.fixture
def draft(agent, agent_client, plan):
    """This month's draft for a tenant on ``plan`` with a real LiveKit session of usage."""
    subscribe(agent.tenant, plan)
    post_session(agent_client)
    start, _ = invoicing.current_period(agent.tenant)
    return invoicing.generate_invoice(agent.tenant_id, start)


@pytest.fixture
def locked_version(draft, plan):
    invoicing.finalize_invoice(draft.pk, force=True)
    version = plan.versions.get()
    assert version.is_locked
    return version
