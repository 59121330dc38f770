"""Finalized invoices and their lines never change (DESIGN §6), enforced by the database itself.

After finalization only the status may move, and only forward (paid never returns to open); lines of a
finalized invoice cannot be inserted, updated or deleted; finalized invoices cannot be deleted.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_invoice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.status <> 'draft' THEN
            RAISE EXCEPTION 'finalized invoice % cannot be deleted', OLD.number USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.status <> 'draft' THEN
        IF (NEW.tenant_id, NEW.period_start, NEW.period_end, NEW.number, NEW.currency, NEW.total,
            NEW.platform_cost, NEW.unmatched, NEW.finalized_at, NEW.generated_at)
           IS DISTINCT FROM
           (OLD.tenant_id, OLD.period_start, OLD.period_end, OLD.number, OLD.currency, OLD.total,
            OLD.platform_cost, OLD.unmatched, OLD.finalized_at, OLD.generated_at) THEN
            RAISE EXCEPTION 'finalized invoice % cannot change', OLD.number USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'draft' AND NEW.status = 'open') OR
        (OLD.status = 'open' AND NEW.status IN ('paid', 'void', 'uncollectible')) OR
        (OLD.status = 'uncollectible' AND NEW.status IN ('paid', 'void'))
    ) THEN
        RAISE EXCEPTION 'invoice % cannot move from % to %', coalesce(OLD.number, OLD.id::text), OLD.status, NEW.status
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_invoice_guard BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_guard();

CREATE FUNCTION billing_invoiceline_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parent_status text;
BEGIN
    SELECT status INTO parent_status FROM billing_invoice
        WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.invoice_id ELSE NEW.invoice_id END;
    IF parent_status IS DISTINCT FROM 'draft' AND parent_status IS NOT NULL THEN
        RAISE EXCEPTION 'lines of a finalized invoice cannot change' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.invoice_id <> NEW.invoice_id THEN
        SELECT status INTO parent_status FROM billing_invoice WHERE id = OLD.invoice_id;
        IF parent_status <> 'draft' THEN
            RAISE EXCEPTION 'lines of a finalized invoice cannot change' USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER billing_invoiceline_guard BEFORE INSERT OR UPDATE OR DELETE ON billing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_guard();
"""

BACKWARD = """
DROP TRIGGER billing_invoiceline_guard ON billing_invoiceline;
DROP FUNCTION billing_invoiceline_guard();
DROP TRIGGER billing_invoice_guard ON billing_invoice;
DROP FUNCTION billing_invoice_guard();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
