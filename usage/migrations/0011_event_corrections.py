"""Event corrections (docs/decisions/021-event-corrections.md): an event can be retracted, once, by the agent that
sent it, by an event that replaces it, or by platform staff with a reason.

The new columns have constant defaults (a catalogue change in PostgreSQL, no table rewrite) and the checks are
added NOT VALID: every stored row passes them, and validating would scan the largest table under its lock. They
hold for every row written from now on. A trigger keeps the table append-only but for that one mark: an event's
own fields never change, and a retraction is final.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class AddConstraintNotValid(migrations.AddConstraint):
    """A check constraint added without validating the rows already stored (they pass it by construction)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            table = schema_editor.quote_name(model._meta.db_table)
            schema_editor.execute(
                f"ALTER TABLE {table} ADD {self.constraint.constraint_sql(model, schema_editor)} NOT VALID"
            )


FORWARD = """
CREATE FUNCTION usage_event_only_retracted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.retracted_at IS NOT NULL THEN
        RAISE EXCEPTION 'usage event % is retracted: a retraction is final', OLD.event_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.tenant_id, NEW.agent_id, NEW.event_id, NEW.timestamp, NEW.session_id, NEW.provider, NEW.model,
        NEW.usage, NEW.metadata, NEW.source, NEW.received_at, NEW.replaces)
       IS DISTINCT FROM
       (OLD.id, OLD.tenant_id, OLD.agent_id, OLD.event_id, OLD.timestamp, OLD.session_id, OLD.provider, OLD.model,
        OLD.usage, OLD.metadata, OLD.source, OLD.received_at, OLD.replaces) THEN
        RAISE EXCEPTION 'usage event % cannot change: events are append-only, only a retraction marks one',
            OLD.event_id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER usage_event_only_retracted BEFORE UPDATE ON usage_usageevent
    FOR EACH ROW EXECUTE FUNCTION usage_event_only_retracted();
"""

BACKWARD = """
DROP TRIGGER usage_event_only_retracted ON usage_usageevent;
DROP FUNCTION usage_event_only_retracted();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0005_agent_name_full_match"),
        ("usage", "0010_usageevent_gaps_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="usageevent",
            options={"permissions": [("retract_usageevent", "Can retract usage events (with a reason)")]},
        ),
        migrations.AddField(
            model_name="usageevent",
            name="replaces",
            field=models.CharField(blank=True, db_default="", default="", max_length=128),
        ),
        migrations.AddField(
            model_name="usageevent",
            name="retracted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="usageevent",
            name="retracted_by_event_id",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="The event that replaced this one.",
                max_length=128,
            ),
        ),
        migrations.AddField(
            model_name="usageevent",
            name="retracted_by_user",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                help_text="The member of platform staff who retracted it (empty: the agent that sent it).",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="usageevent",
            name="retraction_reason",
            field=models.CharField(blank=True, db_default="", default="", max_length=500),
        ),
        AddConstraintNotValid(
            model_name="usageevent",
            constraint=models.CheckConstraint(
                condition=~models.Q(replaces=models.F("event_id")), name="usageevent_replaces_another"
            ),
        ),
        AddConstraintNotValid(
            model_name="usageevent",
            constraint=models.CheckConstraint(
                condition=models.Q(retracted_at__isnull=False)
                | models.Q(retracted_by_event_id="", retraction_reason="", retracted_by_user__isnull=True),
                name="usageevent_retraction_marked_once",
            ),
        ),
        AddConstraintNotValid(
            model_name="usageevent",
            constraint=models.CheckConstraint(
                condition=models.Q(retracted_by_user__isnull=True)
                | (~models.Q(retraction_reason="") & models.Q(retracted_by_event_id="")),
                name="usageevent_staff_retraction_has_reason",
            ),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
