# Invoice lines are ordered by their invoice's id, not by the invoice's own ordering, which joined invoices and
# tenants to every unordered read of lines without naming the joined invoice's tenant (decision 024).

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0022_fast_pages"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="invoiceline",
            options={"ordering": ["invoice_id", "position"]},
        ),
    ]
