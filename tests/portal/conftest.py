import pytest

from billing import invoicing
from tests import livekit_samples as samples
from tests.billing.builders import make_plan, subscribe
from tests.conftest import AgentClient
from tests.factories import AgentFactory, MembershipFactory, TenantFactory, api_key_for


class World:
    """Two tenants with one owner each, usage, a session and a finalized invoice apiece."""

    def __init__(self):
        self.tenants, self.users, self.agents, self.keys, self.invoices = [], [], [], [], []
        sample = samples.load("pipeline_deepgram_openai_cartesia")
        for n in range(2):
            tenant = TenantFactory(timezone="UTC")
            agent = AgentFactory(tenant=tenant)
            key = api_key_for(agent)
            membership = MembershipFactory(tenant=tenant)
            subscribe(tenant, make_plan(f"plan-{tenant.slug}"))
            AgentClient(key).post(
                "/api/v1/livekit/metrics",
                {"session_id": f"call-{n}", "metrics": samples.shifted_metrics(sample)},
            )
            start, _ = invoicing.current_period(tenant)
            invoice = invoicing.finalize_invoice(invoicing.generate_invoice(tenant.pk, start).pk, force=True)
            self.tenants.append(tenant)
            self.users.append(membership.user)
            self.agents.append(agent)
            self.keys.append(key)
            self.invoices.append(invoice)


@pytest.fixture
def world(db):
    return World()
