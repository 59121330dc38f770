from datetime import date

from django.core.management.base import BaseCommand, CommandError

from billing import call_costs
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Recompute per-call costs (billing_callcost) from the stored events in receipt order, with today's "
        "plans and rates: after a price was added for usage that had none, or once after upgrading. The "
        "tenant's ingest waits while its rebuild runs."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--tenant", action="append", default=[], help="Tenant slug (repeatable); default all."
        )
        parser.add_argument(
            "--since",
            type=date.fromisoformat,
            default=None,
            help="Rebuild the periods from the one containing this date (YYYY-MM-DD) on; default every period.",
        )

    def handle(self, *args, tenant, since, **options):
        tenants = Tenant.objects.order_by("slug")
        if tenant:
            tenants = tenants.filter(slug__in=tenant)
            missing = set(tenant) - set(tenants.values_list("slug", flat=True))
            if missing:
                raise CommandError(f"no tenant with slug {', '.join(sorted(missing))}")
        for each in tenants:
            done = call_costs.rebuild(each, since)
            self.stdout.write(f"{each.slug}: {done.events} events priced into {done.rows} call-cost rows")
