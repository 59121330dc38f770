from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments (Stripe)"

    def ready(self) -> None:
        from billing.credit_notes import CREDIT_NOTE_CREATED
        from billing.invoicing import INVOICE_FINALIZED
        from billing.topups import TOPUP_REQUESTED
        from notifications import outbox
        from payments import credit_notes, stripe_sync, tasks, topups

        outbox.subscribe(INVOICE_FINALIZED, tasks.queue_invoice_sync)
        outbox.subscribe(TOPUP_REQUESTED, tasks.queue_topup)
        outbox.subscribe(CREDIT_NOTE_CREATED, tasks.queue_credit_note_sync)
        stripe_sync.register_invoice_handler(topups.handle_invoice_event)
        stripe_sync.register_event_handler(CREDIT_NOTE_CREATED, credit_notes.handle_event)
