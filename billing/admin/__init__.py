"""Billing admin for platform staff (DESIGN §8), one module per area: price plans and their versions
(``plans``), prices and tiers (``prices``), read-only locked versions (``locked_versions``), the audit trail
of plan edits (``audit``), provider rates (``rates``), tenants' subscriptions (``subscriptions``), invoices
and the invoice preview (``invoices``), credit notes and issuing them (``credit_notes``). ``payments.admin`` adds
the Stripe sync of invoices and credit notes.

Nothing here computes a price: forms check prices by building the ``billing.pricing`` dataclasses (so the
admin cannot store a plan the engine would refuse), actions call ``billing.invoicing``,
``billing.plan_versions`` and ``billing.subscriptions``, and ``billing.audit`` writes the trail. Amounts are
formatted by ``billing.money``, always with their currency code.

Importing the modules registers their admins.
"""

from billing.admin import (
    audit,
    coupons,
    credit_notes,
    credits,
    invoices,
    locked_versions,
    plans,
    prices,
    rates,
    subscriptions,
    taxes,
)

__all__ = [
    "audit",
    "coupons",
    "credit_notes",
    "credits",
    "invoices",
    "locked_versions",
    "plans",
    "prices",
    "rates",
    "subscriptions",
    "taxes",
]
