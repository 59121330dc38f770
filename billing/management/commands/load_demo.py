from django.core.management.base import BaseCommand

from billing.demo import load_demo_billing
from usage.demo import load_demo


class Command(BaseCommand):
    help = (
        "Create the demo tenant, agents, users, a month of usage, a plan and the past month's invoice (once)."
    )

    def handle(self, *args, **options):
        summary = load_demo()
        tenant = summary["tenant"]
        invoice = load_demo_billing(tenant)
        self.stdout.write(f"Demo tenant: {tenant.name} ({tenant.slug}), {summary['events']} usage events")
        if invoice is not None:
            self.stdout.write(f"Invoiced last month: {invoice.number}, {invoice.total} {invoice.currency}")
        self.stdout.write(f"Portal login: {summary['username']} / {summary['password']}")
        self.stdout.write(f"Admin login:  {summary['admin']} / {summary['admin_password']}  (/admin/)")
        for agent, key in summary["keys"].items():
            self.stdout.write(f"API key for agent {agent} (shown once): {key}")
        if not summary["keys"]:
            self.stdout.write(
                "Agent API keys were shown when they were created; issue another with: "
                "python manage.py issue_api_key --tenant acme-voice --agent skyway-voice"
            )
