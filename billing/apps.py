from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing import call_costs
        from usage import changes

        # Every batch any path stores is priced per call in its own transaction, and every correction reversed
        # there (billing.call_costs).
        changes.register_stored_hook(call_costs.record)
