"""Budget webhooks become tenant webhook endpoints subscribed to ``budget.threshold_reached``.

The old secret's bytes stay the HMAC key (``whsec_`` + base64 of them), so the key a tenant holds is unchanged;
only the signature format is now Standard Webhooks'. Alerts whose webhook was not delivered yet get a delivery
to the new endpoint, so an upgrade loses none. Reversible: the first such endpoint goes back to the budget.
"""

import base64

from django.db import migrations

OLD_TYPE, NEW_TYPE = "budget.threshold_crossed", "budget.threshold_reached"
DESCRIPTION = "Budget alerts (moved from the budget settings)"


def forward(apps, schema_editor):
    Budget = apps.get_model("spend", "Budget")
    BudgetAlert = apps.get_model("spend", "BudgetAlert")
    Event = apps.get_model("notifications", "Event")
    WebhookEndpoint = apps.get_model("notifications", "WebhookEndpoint")
    WebhookDelivery = apps.get_model("notifications", "WebhookDelivery")
    Event.objects.filter(type=OLD_TYPE).update(type=NEW_TYPE)
    for budget in Budget.objects.exclude(webhook_url=""):
        endpoint = WebhookEndpoint.objects.create(
            tenant_id=budget.tenant_id,
            url=budget.webhook_url,
            description=DESCRIPTION,
            event_types=[NEW_TYPE],
            secret="whsec_" + base64.b64encode(budget.webhook_secret.encode()).decode(),
        )
        undelivered = BudgetAlert.objects.filter(tenant_id=budget.tenant_id, webhook_delivered_at=None)
        for alert_id in undelivered.values_list("pk", flat=True):
            event = Event.objects.filter(
                tenant_id=budget.tenant_id, type=NEW_TYPE, data__alert_id=alert_id
            ).first()
            if event is not None:
                WebhookDelivery.objects.get_or_create(event=event, endpoint=endpoint)


def backward(apps, schema_editor):
    Budget = apps.get_model("spend", "Budget")
    Event = apps.get_model("notifications", "Event")
    WebhookEndpoint = apps.get_model("notifications", "WebhookEndpoint")
    for endpoint in WebhookEndpoint.objects.filter(event_types=[NEW_TYPE]).order_by("pk"):
        key = base64.b64decode(endpoint.secret.removeprefix("whsec_")).decode("ascii", "replace")[:64]
        Budget.objects.filter(tenant_id=endpoint.tenant_id, webhook_url="").update(
            webhook_url=endpoint.url, webhook_secret=key
        )
    WebhookEndpoint.objects.filter(event_types=[NEW_TYPE], description=DESCRIPTION).delete()
    Event.objects.filter(type=NEW_TYPE).update(type=OLD_TYPE)


class Migration(migrations.Migration):
    dependencies = [
        ("spend", "0001_initial"),
        ("notifications", "0002_webhooks"),
    ]

    operations = [migrations.RunPython(forward, backward)]
