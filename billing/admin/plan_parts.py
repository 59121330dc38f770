"""The admin of a plan's parts, its versions and their prices: read only once a finalized invoice used the
version, every edit in the plan's audit trail, the drafts of the plan's tenants refreshed after it, and
decimals shown as entered."""

from django.contrib import admin

from billing.admin.audit import PlanAuditMixin
from billing.admin.drafts import PlanEditRefreshesDrafts
from billing.admin.fields import EnteredDecimalsMixin
from billing.admin.locked_versions import LockedVersionMixin


class PlanPartAdmin(
    EnteredDecimalsMixin, LockedVersionMixin, PlanEditRefreshesDrafts, PlanAuditMixin, admin.ModelAdmin
):
    pass
