from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from usage import archive, partitions
from usage.management.months import parse_month


class Command(BaseCommand):
    help = (
        "Create the coming partitions of the events table, then export, check and drop the months of raw events "
        "past EVENT_RETENTION_MONTHS (what beat does daily); --month archives one month now (e.g. a restored one)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--month", default=None, help="YYYY-MM: archive this month whatever its age.")

    def handle(self, *args, month, **options):
        created = partitions.ensure_partitions(timezone.now())
        for name in created:
            self.stdout.write(f"created partition {name}")
        try:
            if month:
                done = archive.archive_month(parse_month(month, "--month"), timezone.now())
            else:
                done = archive.archive_due(timezone.now())
        except (LookupError, archive.ArchiveMismatch) as error:
            raise CommandError(str(error)) from error
        for name in done:
            self.stdout.write(f"archived {name}")
        if not done:
            self.stdout.write("nothing to archive")
