"""``manage.py citus_plan``: prints the SQL that turns a migrated database into a Citus one (docs/operations.md)."""

from django.core.management.base import BaseCommand

from tenants import citus


class Command(BaseCommand):
    help = "Print the CREATE EXTENSION, create_reference_table and create_distributed_table statements, in order."

    def handle(self, *args, **options):
        self.stdout.write("\n".join(citus.distribution_statements()))
