from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments (Stripe)"

    def ready(self) -> None:
        from billing import tax_calculation
        from billing.credit_notes import CREDIT_NOTE_CREATED
        from billing.invoicing import INVOICE_FINALIZED
        from billing.topups import TOPUP_REQUESTED
        from notifications import outbox
        from payments import credit_notes, stripe_sync, stripe_tax, tasks, topups

        outbox.subscribe(INVOICE_FINALIZED, tasks.queue_invoice_sync)
        outbox.subscribe(TOPUP_REQUESTED, tasks.queue_topup)
        outbox.subscribe(CREDIT_NOTE_CREATED, tasks.queue_credit_note_sync)
        stripe_sync.register_invoice_handler(topups.handle_invoice_event)
        stripe_sync.register_event_handler(CREDIT_NOTE_CREATED, credit_notes.handle_event)
        # Under STRIPE_TAX_ENABLED, finalization asks Stripe Tax for the invoice's tax (decision 019).
        tax_calculation.register(stripe_tax.calculate)
