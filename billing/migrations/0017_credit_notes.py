"""Credit notes (issue 16 part 1, decision 020): the tables, and what the database itself holds about them.

* A credit note names an invoice of its own tenant, and a grant made for one names a note of its own tenant
  (composite foreign keys onto the ``(tenant_id, id)`` unique constraints).
* Issued means final: a note is never deleted, and an update may only move its Stripe sync columns; its lines are
  never updated or deleted, and lines added after the note's transaction make its sums disagree (below).
* Never more than was billed: a note is only inserted against an open, paid or uncollectible invoice of its
  currency, and all notes of an invoice total at most the invoice's total; a line credits only a positive
  charge line of the note's own invoice, and all notes credit at most its amount (and its billable quantity).
  Both checks lock the row they count against first, so concurrent writers are taken one after the other.
* A note adds up: at commit (a deferred constraint trigger), its subtotal, tax and total are the sums of its
  lines', and it has lines.
* Invoice and credit note numbers count in separate series of the number sequence.
"""

import django.db.models.deletion
import django.db.models.expressions
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

FORWARD = """
ALTER TABLE billing_creditnote ADD CONSTRAINT creditnote_invoice_same_tenant
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES billing_invoice (tenant_id, id);
ALTER TABLE billing_creditgrant ADD CONSTRAINT creditgrant_credit_note_same_tenant
    FOREIGN KEY (tenant_id, credit_note_id) REFERENCES billing_creditnote (tenant_id, id);

CREATE FUNCTION billing_creditnote_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    billed record;
    credited numeric;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'credit note % cannot be deleted', OLD.number USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.id, NEW.tenant_id, NEW.invoice_id, NEW.number, NEW.status, NEW.reason, NEW.memo, NEW.outcome,
            NEW.currency, NEW.subtotal, NEW.discount_amount, NEW.tax_amount, NEW.tax_included, NEW.deduction_amount,
            NEW.total, NEW.issued_by_id, NEW.issued_at, NEW.request_key)
           IS DISTINCT FROM
           (OLD.id, OLD.tenant_id, OLD.invoice_id, OLD.number, OLD.status, OLD.reason, OLD.memo, OLD.outcome,
            OLD.currency, OLD.subtotal, OLD.discount_amount, OLD.tax_amount, OLD.tax_included, OLD.deduction_amount,
            OLD.total, OLD.issued_by_id, OLD.issued_at, OLD.request_key) THEN
            RAISE EXCEPTION 'credit note % cannot change once issued', OLD.number
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    SELECT status, total, currency INTO billed FROM billing_invoice WHERE id = NEW.invoice_id FOR UPDATE;
    IF billed.status IS NULL OR billed.status NOT IN ('open', 'paid', 'uncollectible') THEN
        RAISE EXCEPTION 'credit note %: invoice % is %, not finalized or void', NEW.number, NEW.invoice_id, billed.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.currency <> billed.currency THEN
        RAISE EXCEPTION 'credit note % is in %, its invoice in %', NEW.number, NEW.currency, billed.currency
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(total), 0) INTO credited FROM billing_creditnote WHERE invoice_id = NEW.invoice_id;
    IF credited + NEW.total > billed.total THEN
        RAISE EXCEPTION 'credit note % would bring the credit notes of invoice % to %, more than its total %',
            NEW.number, NEW.invoice_id, credited + NEW.total, billed.total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_creditnote_guard BEFORE INSERT OR UPDATE OR DELETE ON billing_creditnote
    FOR EACH ROW EXECUTE FUNCTION billing_creditnote_guard();

CREATE FUNCTION billing_creditnoteline_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    note_invoice bigint;
    billed record;
    credited numeric;
    credited_quantity numeric;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'lines of an issued credit note cannot change' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT invoice_id INTO note_invoice FROM billing_creditnote WHERE id = NEW.credit_note_id;
    SELECT invoice_id, kind, amount, billable_quantity INTO billed
        FROM billing_invoiceline WHERE id = NEW.invoice_line_id FOR UPDATE;
    IF billed.invoice_id IS DISTINCT FROM note_invoice THEN
        RAISE EXCEPTION 'credit note % credits line % of another invoice', NEW.credit_note_id, NEW.invoice_line_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF billed.kind IN ('discount', 'tax', 'credits_applied') OR billed.amount <= 0 THEN
        RAISE EXCEPTION 'invoice line % (%, %) cannot be credited', NEW.invoice_line_id, billed.kind, billed.amount
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(amount), 0), coalesce(sum(quantity), 0) INTO credited, credited_quantity
        FROM billing_creditnoteline WHERE invoice_line_id = NEW.invoice_line_id;
    IF credited + NEW.amount > billed.amount THEN
        RAISE EXCEPTION 'invoice line % would be credited % of its %', NEW.invoice_line_id, credited + NEW.amount,
            billed.amount USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.quantity IS NOT NULL AND credited_quantity + NEW.quantity > billed.billable_quantity THEN
        RAISE EXCEPTION 'invoice line % would be credited a quantity of % of its %', NEW.invoice_line_id,
            credited_quantity + NEW.quantity, billed.billable_quantity USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_creditnoteline_guard BEFORE INSERT OR UPDATE OR DELETE ON billing_creditnoteline
    FOR EACH ROW EXECUTE FUNCTION billing_creditnoteline_guard();

CREATE FUNCTION billing_creditnote_adds_up() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    note record;
    sums record;
BEGIN
    SELECT id, number, subtotal, tax_amount, total INTO note FROM billing_creditnote
        WHERE id = (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
    SELECT count(*) AS lines, coalesce(sum(amount), 0) AS amount, coalesce(sum(tax_amount), 0) AS tax,
           coalesce(sum(total), 0) AS total
        INTO sums FROM billing_creditnoteline WHERE credit_note_id = note.id;
    IF sums.lines = 0 OR (sums.amount, sums.tax, sums.total) IS DISTINCT FROM (note.subtotal, note.tax_amount, note.total) THEN
        RAISE EXCEPTION 'the lines of credit note % do not add up to it', note.number
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER billing_creditnote_adds_up AFTER INSERT ON billing_creditnote
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_creditnote_adds_up('id');
CREATE CONSTRAINT TRIGGER billing_creditnoteline_adds_up AFTER INSERT ON billing_creditnoteline
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_creditnote_adds_up('credit_note_id');
"""

BACKWARD = """
DROP TRIGGER billing_creditnoteline_adds_up ON billing_creditnoteline;
DROP TRIGGER billing_creditnote_adds_up ON billing_creditnote;
DROP FUNCTION billing_creditnote_adds_up();
DROP TRIGGER billing_creditnoteline_guard ON billing_creditnoteline;
DROP FUNCTION billing_creditnoteline_guard();
DROP TRIGGER billing_creditnote_guard ON billing_creditnote;
DROP FUNCTION billing_creditnote_guard();
ALTER TABLE billing_creditgrant DROP CONSTRAINT creditgrant_credit_note_same_tenant;
ALTER TABLE billing_creditnote DROP CONSTRAINT creditnote_invoice_same_tenant;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0016_tenant_pricing_generation"),
        ("tenants", "0005_agent_name_full_match"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="CreditNote",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("number", models.CharField(max_length=32, unique=True)),
                ("status", models.CharField(choices=[("issued", "Issued")], default="issued", max_length=16)),
                (
                    "reason",
                    models.CharField(
                        choices=[
                            ("duplicate", "Duplicate"),
                            ("product_unsatisfactory", "product unsatisfactory"),
                            ("order_change", "order change"),
                            ("fraudulent", "Fraudulent"),
                            ("other", "other (see memo)"),
                        ],
                        max_length=32,
                    ),
                ),
                (
                    "memo",
                    models.TextField(
                        blank=True, help_text="Required when the reason is other; printed on the note."
                    ),
                ),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("reduce_due", "reduce what is due"),
                            ("refund", "refund through Stripe"),
                            ("credit_balance", "credit the prepaid balance"),
                        ],
                        max_length=16,
                    ),
                ),
                ("currency", models.CharField(max_length=3)),
                (
                    "subtotal",
                    models.DecimalField(
                        decimal_places=4,
                        help_text="The lines credited, in the invoice lines' own terms.",
                        max_digits=18,
                    ),
                ),
                (
                    "discount_amount",
                    models.DecimalField(
                        decimal_places=4, help_text="Their share of the invoice's discounts.", max_digits=18
                    ),
                ),
                (
                    "tax_amount",
                    models.DecimalField(
                        decimal_places=4, help_text="Their share of the invoice's tax.", max_digits=18
                    ),
                ),
                (
                    "tax_included",
                    models.BooleanField(
                        default=False,
                        help_text="The tax is included in the lines' amounts (inclusive rates): not added.",
                    ),
                ),
                (
                    "deduction_amount",
                    models.DecimalField(
                        decimal_places=4,
                        help_text="Their share of what the invoice deducted after tax: prepaid credit applied, negative lines.",
                        max_digits=18,
                    ),
                ),
                (
                    "total",
                    models.DecimalField(decimal_places=4, help_text="What is credited.", max_digits=18),
                ),
                ("issued_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "request_key",
                    models.CharField(
                        blank=True,
                        help_text="The admin form's one-time key: a double submit issues once.",
                        max_length=64,
                    ),
                ),
                ("stripe_credit_note_id", models.CharField(blank=True, max_length=255)),
                ("stripe_refund_id", models.CharField(blank=True, max_length=255)),
                (
                    "sync_state",
                    models.CharField(
                        choices=[
                            ("not_synced", "Not Synced"),
                            ("pending", "Pending"),
                            ("synced", "Synced"),
                            ("failed", "Failed"),
                            ("not_needed", "not needed (the invoice is not on Stripe)"),
                        ],
                        default="not_synced",
                        max_length=16,
                    ),
                ),
                ("sync_error", models.TextField(blank=True)),
                ("sync_attempted_at", models.DateTimeField(blank=True, null=True)),
                ("synced_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ["-issued_at", "-id"],
            },
        ),
        migrations.CreateModel(
            name="CreditNoteLine",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("position", models.PositiveIntegerField()),
                ("description", models.CharField(max_length=300)),
                (
                    "quantity",
                    models.DecimalField(
                        blank=True,
                        decimal_places=6,
                        help_text="Credited by quantity.",
                        max_digits=30,
                        null=True,
                    ),
                ),
                ("amount", models.DecimalField(decimal_places=4, max_digits=18)),
                ("tax_amount", models.DecimalField(decimal_places=4, default=0, max_digits=18)),
                ("total", models.DecimalField(decimal_places=4, max_digits=18)),
            ],
            options={
                "ordering": ["credit_note", "position"],
            },
        ),
        migrations.AddField(
            model_name="invoicenumbersequence",
            name="series",
            field=models.CharField(default="ML", max_length=8),
        ),
        migrations.AlterField(
            model_name="invoicenumbersequence",
            name="year",
            field=models.PositiveIntegerField(),
        ),
        migrations.AddConstraint(
            model_name="invoicenumbersequence",
            constraint=models.UniqueConstraint(
                fields=("series", "year"), name="numbersequence_one_per_series_year"
            ),
        ),
        migrations.AddField(
            model_name="creditnote",
            name="invoice",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="credit_notes", to="billing.invoice"
            ),
        ),
        migrations.AddField(
            model_name="creditnote",
            name="issued_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="creditnote",
            name="tenant",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="credit_notes", to="tenants.tenant"
            ),
        ),
        migrations.AddField(
            model_name="creditgrant",
            name="credit_note",
            field=models.OneToOneField(
                blank=True,
                help_text="The credit note whose outcome this credit is (one grant per credit note).",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="grant",
                to="billing.creditnote",
            ),
        ),
        migrations.AddField(
            model_name="creditnoteline",
            name="credit_note",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="lines", to="billing.creditnote"
            ),
        ),
        migrations.AddField(
            model_name="creditnoteline",
            name="invoice_line",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="credit_note_lines",
                to="billing.invoiceline",
            ),
        ),
        migrations.AddIndex(
            model_name="creditnote",
            index=models.Index(fields=["invoice", "issued_at"], name="creditnote_invoice_issued"),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("discount_amount__gte", 0), ("subtotal__gt", 0), ("tax_amount__gte", 0), ("total__gt", 0)
                ),
                name="creditnote_amounts_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("tax_included", False),
                        (
                            "total",
                            django.db.models.expressions.CombinedExpression(
                                django.db.models.expressions.CombinedExpression(
                                    django.db.models.expressions.CombinedExpression(
                                        models.F("subtotal"), "-", models.F("discount_amount")
                                    ),
                                    "+",
                                    models.F("tax_amount"),
                                ),
                                "-",
                                models.F("deduction_amount"),
                            ),
                        ),
                    ),
                    models.Q(
                        ("tax_included", True),
                        (
                            "total",
                            django.db.models.expressions.CombinedExpression(
                                django.db.models.expressions.CombinedExpression(
                                    models.F("subtotal"), "-", models.F("discount_amount")
                                ),
                                "-",
                                models.F("deduction_amount"),
                            ),
                        ),
                    ),
                    _connector="OR",
                ),
                name="creditnote_total_adds_up",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("reason", "other"), _negated=True),
                    models.Q(("memo", ""), _negated=True),
                    _connector="OR",
                ),
                name="creditnote_other_has_memo",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.UniqueConstraint(
                condition=models.Q(("request_key", ""), _negated=True),
                fields=("invoice", "request_key"),
                name="creditnote_request_once",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.UniqueConstraint(
                condition=models.Q(("stripe_credit_note_id", ""), _negated=True),
                fields=("stripe_credit_note_id",),
                name="creditnote_unique_stripe_credit_note",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnote",
            constraint=models.UniqueConstraint(fields=("tenant", "id"), name="creditnote_tenant_id"),
        ),
        migrations.AddConstraint(
            model_name="creditnoteline",
            constraint=models.UniqueConstraint(
                fields=("credit_note", "position"), name="creditnoteline_unique_position"
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnoteline",
            constraint=models.UniqueConstraint(
                fields=("credit_note", "invoice_line"), name="creditnoteline_one_per_invoice_line"
            ),
        ),
        migrations.AddConstraint(
            model_name="creditnoteline",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("amount__gt", 0),
                    ("tax_amount__gte", 0),
                    ("total__gte", 0),
                    models.Q(("quantity__isnull", True), ("quantity__gt", 0), _connector="OR"),
                ),
                name="creditnoteline_amounts_valid",
            ),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
