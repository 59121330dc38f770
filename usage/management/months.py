"""A month as the archive commands take it."""

from datetime import UTC, datetime

from django.core.management.base import CommandError


def parse_month(text: str, name: str) -> datetime:
    """``YYYY-MM`` → the first instant of that UTC month; a CommandError naming the argument otherwise."""
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as error:
        raise CommandError(f"{name}: not a month (YYYY-MM): {text}") from error
