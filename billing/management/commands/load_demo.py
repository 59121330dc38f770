import sys
from pathlib import Path

from django.conf import settings
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
                f"{python_command()} manage.py issue_api_key --tenant {tenant.slug} --agent skyway-voice"
            )


def python_command() -> str:
    """This interpreter as the hint must name it to run as printed from the project root: a bare ``python``
    is often missing or lacks Django, so ``.venv/bin/python`` under ``make run``, else the full path."""
    executable = Path(sys.executable)
    try:
        return str(executable.relative_to(settings.BASE_DIR))
    except ValueError:
        return str(executable)
