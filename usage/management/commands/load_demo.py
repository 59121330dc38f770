from django.core.management.base import BaseCommand

from usage.demo import load_demo


class Command(BaseCommand):
    help = "Create the demo tenant, agents, user and a month of usage (once; later runs change nothing)."

    def handle(self, *args, **options):
        summary = load_demo()
        tenant = summary["tenant"]
        self.stdout.write(f"Demo tenant: {tenant.name} ({tenant.slug}), {summary['events']} usage events")
        self.stdout.write(f"Portal login: {summary['username']} / {summary['password']}")
        self.stdout.write(f"Admin login:  {summary['admin']} / {summary['admin_password']}  (/admin/)")
        for agent, key in summary["keys"].items():
            self.stdout.write(f"API key for agent {agent} (shown once): {key}")
        if not summary["keys"]:
            self.stdout.write(
                "Agent API keys were shown when they were created; "
                "issue another with: python manage.py issue_api_key --tenant acme-voice --agent skyway-voice"
            )
