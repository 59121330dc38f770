from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from observability import logs, task_outcomes

        logs.connect_celery_logging()
        task_outcomes.connect()
