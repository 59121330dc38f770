from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from spend.models import SpendPolicy
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Set how a tenant pays: postpaid, prepaid-soft (alerts only) or prepaid-hard (holds refused at zero)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--policy", required=True, choices=SpendPolicy.Policy.values)
        parser.add_argument("--overdraft", default="0", help="prepaid-hard: how far below zero calls may go.")

    def handle(self, *args, tenant, policy, overdraft, **options):
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"no tenant with slug {tenant}")
        try:
            amount = Decimal(overdraft)
        except InvalidOperation as error:
            raise CommandError(f"--overdraft: not a number: {overdraft}") from error
        if not amount.is_finite() or amount < 0:
            raise CommandError("--overdraft must be 0 or more")
        SpendPolicy.objects.update_or_create(
            tenant=found, defaults={"policy": policy, "overdraft": amount, "updated_at": timezone.now()}
        )
        self.stdout.write(
            f"{found.slug}: {policy}" + (f", overdraft {amount} {found.currency}" if amount else "")
        )
