# The period pricing's per-process cache (billing.period_pricing, decision 019) also holds the coupons in force
# and the tax of a period, so the tables they come from change the catalogue generation too (see 0008).

from django.db import migrations

TABLES = ["billing_coupon", "billing_appliedcoupon", "billing_billingprofile", "billing_taxrate"]

FORWARD = [
    f"""
    CREATE TRIGGER {table}_catalogue_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION billing_new_catalogue_generation()
    """
    for table in TABLES
]
BACKWARD = [f"DROP TRIGGER IF EXISTS {table}_catalogue_generation ON {table}" for table in TABLES]


class Migration(migrations.Migration):
    dependencies = [("billing", "0014_taxes")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
