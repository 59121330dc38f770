"""Keys ready for Citus (decision 024). Every billing table distributed by tenant gets the primary key
(tenant_id, id); invoice lines and credit note lines get the tenant column (filled from their invoice or note,
with the immutability triggers paused for that one statement: the value is their invoice's own tenant); foreign
keys between them and every unique key hold the tenant. Invoice and credit note numbers and Stripe's ids become
unique per tenant: they stay unique across tenants by construction (one counter row per series and year hands
out each number; Stripe issues each id once)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from tenants.citus import tenant_primary_key


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0019_stripe_tax"),
        ("tenants", "0006_citus_keys"),
        # payments.0002 stops asking for the Stripe events' single-column key to invoices before this drops it
        ("payments", "0002_citus_keys"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="creditnote",
            name="creditnote_request_once",
        ),
        migrations.RemoveConstraint(
            model_name="creditnote",
            name="creditnote_unique_stripe_credit_note",
        ),
        migrations.RemoveConstraint(
            model_name="creditnoteline",
            name="creditnoteline_unique_position",
        ),
        migrations.RemoveConstraint(
            model_name="creditnoteline",
            name="creditnoteline_one_per_invoice_line",
        ),
        migrations.RemoveConstraint(
            model_name="invoice",
            name="invoice_unique_stripe_invoice",
        ),
        migrations.RemoveConstraint(
            model_name="invoiceline",
            name="invoiceline_unique_position",
        ),
        migrations.RemoveConstraint(
            model_name="invoiceline",
            name="invoiceline_one_per_group_and_code",
        ),
        migrations.RemoveConstraint(
            model_name="ledgerentry",
            name="ledger_grant_posted_once",
        ),
        migrations.RemoveConstraint(
            model_name="ledgerentry",
            name="ledger_grant_pays_invoice_once",
        ),
        migrations.RemoveConstraint(
            model_name="ledgerentry",
            name="ledger_grant_expires_once",
        ),
        migrations.AddField(
            model_name="creditnoteline",
            name="tenant",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="tenants.tenant"
            ),
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="tenant",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="tenants.tenant"
            ),
        ),
        migrations.RunSQL(
            [
                "ALTER TABLE billing_invoiceline DISABLE TRIGGER USER",
                "UPDATE billing_invoiceline l SET tenant_id = i.tenant_id FROM billing_invoice i WHERE i.id = l.invoice_id",
                "ALTER TABLE billing_invoiceline ENABLE TRIGGER USER",
                "ALTER TABLE billing_creditnoteline DISABLE TRIGGER USER",
                "UPDATE billing_creditnoteline l SET tenant_id = n.tenant_id FROM billing_creditnote n "
                "WHERE n.id = l.credit_note_id",
                "ALTER TABLE billing_creditnoteline ENABLE TRIGGER USER",
            ],
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="creditnoteline",
            name="tenant",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="+", to="tenants.tenant"
            ),
        ),
        migrations.AlterField(
            model_name="invoiceline",
            name="tenant",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="+", to="tenants.tenant"
            ),
        ),
        migrations.AlterField(
            model_name="creditgrant",
            name="credit_note",
            field=models.OneToOneField(
                blank=True,
                db_constraint=False,
                help_text="The credit note whose outcome this credit is (one grant per credit note).",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="grant",
                to="billing.creditnote",
            ),
        ),
        migrations.AlterField(
            model_name="creditgrant",
            name="topup",
            field=models.OneToOneField(
                blank=True,
                db_constraint=False,
                help_text="The paid top-up this credit was bought with (one grant per top-up).",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="grant",
                to="billing.topup",
            ),
        ),
        migrations.AlterField(
            model_name="creditnote",
            name="invoice",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="credit_notes",
                to="billing.invoice",
            ),
        ),
        migrations.AlterField(
            model_name="creditnote",
            name="number",
            field=models.CharField(max_length=32),
        ),
        migrations.AlterField(
            model_name="creditnoteline",
            name="credit_note",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="lines",
                to="billing.creditnote",
            ),
        ),
        migrations.AlterField(
            model_name="creditnoteline",
            name="invoice_line",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="credit_note_lines",
                to="billing.invoiceline",
            ),
        ),
        migrations.AlterField(
            model_name="invoice",
            name="number",
            field=models.CharField(blank=True, max_length=32, null=True),
        ),
        migrations.AlterField(
            model_name="invoiceline",
            name="invoice",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="lines",
                to="billing.invoice",
            ),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="grant",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="billing.creditgrant",
            ),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="invoice",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="billing.invoice",
            ),
        ),
        migrations.AddIndex(
            model_name="invoice",
            index=models.Index(
                condition=models.Q(("stripe_invoice_id", ""), _negated=True),
                fields=["stripe_invoice_id"],
                name="invoice_stripe_invoice",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.UniqueConstraint(
                condition=models.Q(("request_key", ""), _negated=True),
                fields=("tenant", "invoice", "request_key"),
                name="creditnote_request_once",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.UniqueConstraint(
                condition=models.Q(("stripe_credit_note_id", ""), _negated=True),
                fields=("tenant", "stripe_credit_note_id"),
                name="creditnote_unique_stripe_credit_note",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.UniqueConstraint(fields=("tenant", "number"), name="creditnote_unique_number"),
        ),
        migrations.AddConstraint(
            model_name="creditnoteline",
            constraint=models.UniqueConstraint(
                fields=("tenant", "credit_note", "position"), name="creditnoteline_unique_position"
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnoteline",
            constraint=models.UniqueConstraint(
                fields=("tenant", "credit_note", "invoice_line"), name="creditnoteline_one_per_invoice_line"
            ),
        ),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.UniqueConstraint(fields=("tenant", "number"), name="invoice_unique_number"),
        ),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.UniqueConstraint(
                condition=models.Q(("stripe_invoice_id", ""), _negated=True),
                fields=("tenant", "stripe_invoice_id"),
                name="invoice_unique_stripe_invoice",
            ),
        ),
        migrations.AddConstraint(
            model_name="invoiceline",
            constraint=models.UniqueConstraint(
                fields=(
                    "tenant",
                    "invoice",
                    "kind",
                    "adjusts_kind",
                    "meter",
                    "provider",
                    "model",
                    "segment_start",
                    "adjusted_period_start",
                    "code",
                ),
                name="invoiceline_one_per_group_and_code",
                nulls_distinct=False,
            ),
        ),
        migrations.AddConstraint(
            model_name="invoiceline",
            constraint=models.UniqueConstraint(
                fields=("tenant", "invoice", "position"), name="invoiceline_unique_position"
            ),
        ),
        migrations.AddConstraint(
            model_name="ledgerentry",
            constraint=models.UniqueConstraint(
                condition=models.Q(("kind", "grant")),
                fields=("tenant", "grant"),
                name="ledger_grant_posted_once",
            ),
        ),
        migrations.AddConstraint(
            model_name="ledgerentry",
            constraint=models.UniqueConstraint(
                condition=models.Q(("kind", "application")),
                fields=("tenant", "grant", "invoice"),
                name="ledger_grant_pays_invoice_once",
            ),
        ),
        migrations.AddConstraint(
            model_name="ledgerentry",
            constraint=models.UniqueConstraint(
                condition=models.Q(("kind", "expiry")),
                fields=("tenant", "grant"),
                name="ledger_grant_expires_once",
            ),
        ),
        # a grant's top-up and credit note stay one-to-one in the model; the database holds them unique with
        # the tenant, which is the same rule (the paired foreign keys of 0009 keep both in the grant's tenant)
        migrations.RunSQL(
            [
                "ALTER TABLE billing_creditgrant DROP CONSTRAINT billing_creditgrant_topup_id_key",
                "ALTER TABLE billing_creditgrant ADD CONSTRAINT creditgrant_one_per_topup UNIQUE (tenant_id, topup_id)",
                "ALTER TABLE billing_creditgrant DROP CONSTRAINT billing_creditgrant_credit_note_id_key",
                "ALTER TABLE billing_creditgrant ADD CONSTRAINT creditgrant_one_per_credit_note "
                "UNIQUE (tenant_id, credit_note_id)",
            ],
            [
                "ALTER TABLE billing_creditgrant DROP CONSTRAINT creditgrant_one_per_credit_note",
                "ALTER TABLE billing_creditgrant ADD CONSTRAINT billing_creditgrant_credit_note_id_key "
                "UNIQUE (credit_note_id)",
                "ALTER TABLE billing_creditgrant DROP CONSTRAINT creditgrant_one_per_topup",
                "ALTER TABLE billing_creditgrant ADD CONSTRAINT billing_creditgrant_topup_id_key UNIQUE (topup_id)",
            ],
        ),
        migrations.RunSQL(*tenant_primary_key("billing_subscription")),
        migrations.RunSQL(*tenant_primary_key("billing_callcost")),
        migrations.RunSQL(*tenant_primary_key("billing_tierposition")),
        migrations.RunSQL(*tenant_primary_key("billing_tieredcharge")),
        migrations.RunSQL(*tenant_primary_key("billing_appliedcoupon")),
        migrations.RunSQL(*tenant_primary_key("billing_billingprofile")),
        migrations.RunSQL(*tenant_primary_key("billing_invoice")),
        migrations.RunSQL(*tenant_primary_key("billing_invoiceline", {"invoice_id": "billing_invoice"})),
        migrations.RunSQL(*tenant_primary_key("billing_topup")),
        migrations.RunSQL(*tenant_primary_key("billing_creditnote")),
        migrations.RunSQL(
            *tenant_primary_key(
                "billing_creditnoteline",
                {"credit_note_id": "billing_creditnote", "invoice_line_id": "billing_invoiceline"},
            )
        ),
        migrations.RunSQL(*tenant_primary_key("billing_creditgrant")),
        migrations.RunSQL(*tenant_primary_key("billing_ledgerentry")),
    ]
