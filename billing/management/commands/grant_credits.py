from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from django.core.management.base import BaseCommand, CommandError

from billing import credits
from billing.models import CreditGrant
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Give a tenant prepaid credit in its currency (posted to its credit ledger at once)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--amount", required=True, help="e.g. 100.00, in the tenant's currency.")
        parser.add_argument("--reason", required=True)
        parser.add_argument("--source", default="promotional", choices=CreditGrant.Source.values)
        parser.add_argument("--priority", type=int, default=0, help="Higher is used first.")
        parser.add_argument(
            "--expires", default=None, help="YYYY-MM-DD: expires at the start of that day, tenant time."
        )

    def handle(self, *args, tenant, amount, reason, source, priority, expires, **options):
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"no tenant with slug {tenant}")
        try:
            value = Decimal(amount)
        except InvalidOperation as error:
            raise CommandError(f"--amount: not a number: {amount}") from error
        expires_at = None
        if expires:
            try:
                day = datetime.strptime(expires, "%Y-%m-%d").date()
            except ValueError as error:
                raise CommandError(f"--expires: not a date (YYYY-MM-DD): {expires}") from error
            expires_at = datetime.combine(day, time.min, ZoneInfo(found.timezone))
        try:
            made = credits.grant(
                found, value, source=source, reason=reason, priority=priority, expires_at=expires_at
            )
        except credits.CreditError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"granted {made.amount} {made.currency} to {found.slug} (grant {made.pk})")
