# Budgets moved to the spend app: spend.0001 renames the tables and takes over the models' state; here the
# tenants app only forgets them (no database change).

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0002_budgets"),
        ("spend", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="budgetalert", name="tenant"),
                migrations.DeleteModel(name="Budget"),
                migrations.DeleteModel(name="BudgetAlert"),
            ]
        )
    ]
