from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments (Stripe)"

    def ready(self) -> None:
        from billing.invoicing import INVOICE_FINALIZED
        from notifications import outbox
        from payments import tasks

        outbox.subscribe(INVOICE_FINALIZED, tasks.queue_invoice_sync)
