from django.apps import AppConfig


class SpendConfig(AppConfig):
    name = "spend"
    verbose_name = "Spend control"

    def ready(self) -> None:
        from billing.credits import CREDIT_GRANTED
        from notifications import outbox
        from spend import tasks
        from usage import changes

        # A stored batch may cross a budget threshold or bring a prepaid balance low, a correction raise it:
        # check soon after.
        changes.register_stored_hook(tasks.after_ingest)
        # Credit arrived (granted, or a top-up paid): the balance's state is recorded again.
        outbox.subscribe(CREDIT_GRANTED, tasks.after_event)
