import factory
from django.contrib.auth.hashers import make_password

from tenants.keys import issue_key
from tenants.models import Agent, Membership, Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")
    currency = "USD"
    timezone = "UTC"


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"agent-{n}")


USER_PASSWORD = "correct horse battery staple"
_password_hash = None


def _hashed_password() -> str:
    global _password_hash  # hashing is deliberately slow: do it once per test run
    if _password_hash is None:
        _password_hash = make_password(USER_PASSWORD)
    return _password_hash


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "auth.User"

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.LazyFunction(_hashed_password)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    tenant = factory.SubFactory(TenantFactory)
    role = Membership.Role.OWNER


def api_key_for(agent: Agent) -> str:
    return issue_key(agent).plaintext
