"""``manage.py issue_api_key --tenant SLUG --agent NAME [--create]``: prints only the new key on stdout."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants.keys import issue_key
from tenants.models import Agent, Tenant


class Command(BaseCommand):
    help = "Issue an API key for an agent; with --create, also create the tenant and agent if missing."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--agent", required=True, help="agent name")
        parser.add_argument("--create", action="store_true", help="create the tenant and agent when missing")
        parser.add_argument("--label", default="issued by manage.py issue_api_key")

    def handle(self, *args, tenant: str, agent: str, create: bool, label: str, **options):
        try:
            plaintext = self._issue(tenant, agent, create, label)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(plaintext)

    def _issue(self, tenant: str, agent: str, create: bool, label: str) -> str:
        with transaction.atomic():
            tenant_obj = Tenant.objects.filter(slug=tenant).first()
            if tenant_obj is None:
                if not create:
                    raise CommandError(f"No tenant with slug {tenant!r} (use --create to create it).")
                tenant_obj = Tenant(slug=tenant, name=tenant)
                tenant_obj.full_clean()
                tenant_obj.save()
                self.stderr.write(f"created tenant {tenant!r}")
            agent_obj = Agent.objects.for_tenant(tenant_obj).filter(name=agent).first()
            if agent_obj is None:
                if not create:
                    raise CommandError(
                        f"No agent {agent!r} in tenant {tenant!r} (use --create to create it)."
                    )
                agent_obj = Agent(tenant=tenant_obj, name=agent)
                agent_obj.full_clean()
                agent_obj.save()
                self.stderr.write(f"created agent {agent!r}")
            return issue_key(agent_obj, label=label).plaintext
