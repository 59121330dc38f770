from django.core.management.base import BaseCommand, CommandError

from usage import archive
from usage.management.months import parse_month
from usage.models import EventArchive


class Command(BaseCommand):
    help = (
        "Bring an archived month of raw events back into PostgreSQL from its file (checked before and after "
        "loading). It stays until archived again with archive_events --month."
    )

    def add_arguments(self, parser):
        parser.add_argument("month", help="YYYY-MM")

    def handle(self, *args, month, **options):
        start = parse_month(month, "month")
        try:
            record = archive.restore_month(start)
        except EventArchive.DoesNotExist as error:
            raise CommandError(f"{month} was never archived") from error
        except archive.ArchiveMismatch as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"restored {month}: {record.rows} events from {record.path}")
