from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments (Stripe)"

    def ready(self) -> None:
        from billing.invoicing import INVOICE_FINALIZED
        from billing.topups import TOPUP_REQUESTED
        from notifications import outbox
        from payments import stripe_sync, tasks, topups

        outbox.subscribe(INVOICE_FINALIZED, tasks.queue_invoice_sync)
        outbox.subscribe(TOPUP_REQUESTED, tasks.queue_topup)
        stripe_sync.register_invoice_handler(topups.handle_invoice_event)
