from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from notifications import outbox, tasks

        outbox.subscribe(outbox.ALL, tasks.queue_deliveries)
