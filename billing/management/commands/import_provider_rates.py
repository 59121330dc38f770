from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import catalogue
from billing.money import format_unit_price_with_code


class Command(BaseCommand):
    help = (
        "Load provider rates (the platform's own costs) from the pinned public price list (LiteLLM's, as "
        "tokencost ships it). Rates typed in by staff are never overwritten; --dry-run prints the diff only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Print what would change; change nothing.")
        parser.add_argument(
            "--effective-from",
            type=date.fromisoformat,
            default=None,
            help="Date (YYYY-MM-DD) new and changed rates take effect; default today.",
        )
        parser.add_argument(
            "--source",
            type=Path,
            default=None,
            help="A copy of LiteLLM's model_prices_and_context_window.json to read instead of the pinned one.",
        )
        parser.add_argument("--verbose-diff", action="store_true", help="List every new rate, not a count.")

    def handle(self, *args, dry_run, effective_from, source, verbose_diff, **options):
        try:
            snapshot = catalogue.load_snapshot(source)
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot read the price list: {error}") from error
        effective_from = effective_from or timezone.localdate()
        plan = catalogue.plan_import(snapshot, effective_from)
        out = self.stdout.write
        out(f"Price list: {snapshot.label}; rates take effect {effective_from.isoformat()}")
        out(f"  new: {len(plan.new)}")
        if verbose_diff:
            for rate in plan.new:
                out(f"    + {_describe(rate)}")
        out(f"  changed: {len(plan.changed)}")
        for stored, rate in plan.changed:
            was = format_unit_price_with_code(stored.cost_per_unit, stored.unit_size, "USD")
            out(f"    ~ {_describe(rate)} (was {was} from {stored.effective_from.isoformat()})")
        out(f"  unchanged: {plan.unchanged}")
        out(f"  skipped, a manual rate covers it: {len(plan.manual)}")
        for rate in plan.manual:
            out(f"    = {_describe(rate)}")
        out(f"  in use without any provider rate: {len(plan.missing)}")
        for provider, model, meter in plan.missing:
            out(f"    ? {provider or '(no provider)'} {model or '(no model)'} {meter}")
        if dry_run:
            out("Dry run: nothing changed.")
            return
        catalogue.apply(plan, snapshot, effective_from)
        out(f"Imported {len(plan.new)} new and {len(plan.changed)} changed rate(s).")


def _describe(rate: catalogue.CatalogueRate) -> str:
    price = format_unit_price_with_code(rate.cost_per_unit, rate.unit_size, "USD")
    return f"{rate.provider} {rate.model} {rate.meter}: {price} [{rate.key}]"
