# Stripe webhook events moved to the payments app: payments.0001 renames the table and takes over the model's
# state; here billing only forgets it (no database change).

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_stripe_sync"),
        ("payments", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="StripeEvent")])
    ]
