from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from notifications import outbox, tasks
        from observability import metrics

        metrics.gauge_at_scrape(
            "meterline_outbox_pending_events",
            "Outbox events not yet handed to their subscribers.",
            outbox.pending_count,
        )

        outbox.subscribe(outbox.ALL, tasks.queue_deliveries)
