from django.apps import AppConfig


class SpendConfig(AppConfig):
    name = "spend"
    verbose_name = "Spend control"

    def ready(self) -> None:
        from notifications import outbox
        from spend import budgets, tasks

        outbox.subscribe(budgets.THRESHOLD_CROSSED, tasks.queue_webhook_delivery)
