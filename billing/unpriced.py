"""Usage no price matches, reported where it arrives (issue 17 part 2, DESIGN §15: never shown as free).

The ingest response's ``unpriced`` report is made by billing.call_costs.record, which prices every stored
quantity anyway: for each event it finds the plan version in force on its tenant-local day, exactly as the
invoice will (``billing.period_pricing.plan_segments``), and lists the (meter, provider, model) groups that
version cannot price, with the number of events that carried them. The reasons are those of the invoice's
unmatched usage:

- ``no_plan``: no subscription, or the plan has no version yet, on that day;
- ``no_price``: no price of the version matches the meter, provider and model (often usage without a provider
  and model, as LiveKit 1.0–1.2.11 sends it);
- ``no_provider_rate``: a cost-plus price matches but no provider rate does, so there is no cost to mark up.
"""

NO_PLAN = "no_plan"
NO_PRICE = "no_price"
NO_PROVIDER_RATE = "no_provider_rate"
