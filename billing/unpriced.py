"""Usage no price matches, reported where it arrives (issue 17 part 2, DESIGN §15: never shown as free).

``report`` is the ingest hook (``usage.ingest.store_events(on_stored=…)``): for the events a batch actually
stored, it finds the plan version in force on each event's tenant-local day, exactly as the invoice will
(``billing.period_pricing.plan_segments``), and lists the (meter, provider, model) groups that version cannot
price, with the number of events that carried them. The reasons are those of the invoice's unmatched usage:

- ``no_plan``: no subscription, or the plan has no version yet, on that day;
- ``no_price``: no price of the version matches the meter, provider and model (often usage without a provider
  and model, as LiveKit 1.0–1.2.11 sends it);
- ``no_provider_rate``: a cost-plus price matches but no provider rate does, so there is no cost to mark up.

It reads only catalogue tables (subscriptions, plan versions, prices, provider rates), a few queries per batch
whatever its size, and writes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from billing import period_pricing, pricing
from tenants.models import Agent, Tenant
from usage.validation import EventRecord

NO_PLAN = "no_plan"
NO_PRICE = "no_price"
NO_PROVIDER_RATE = "no_provider_rate"


def _local_day(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()


def report(tenant: Tenant, agent: Agent, records: Sequence[EventRecord]) -> dict[str, Any]:
    """``{"unpriced": [{"meter", "provider", "model", "events", "reason"}]}`` for the stored ``records``, or
    ``{}`` when every quantity they carry has a price."""
    quantities = [
        (record, meter) for record in records for meter, quantity in record.usage.items() if quantity != "0"
    ]
    if not quantities:
        return {}
    zone = ZoneInfo(tenant.timezone)
    days = [_local_day(record.timestamp, zone) for record, _ in quantities]
    segments = period_pricing.plan_segments(tenant, min(days), max(days) + timedelta(days=1))
    period_pricing.load_prices(segments)
    keys = {(meter, record.provider, record.model) for record, meter in quantities}
    rates = period_pricing.provider_rates(tenant.currency, keys)
    plans: dict[int, pricing.Plan] = {}
    verdicts: dict[tuple[int, tuple[str, str, str]], str] = {}
    events: Counter[tuple[str, str, str, str]] = Counter()
    for (record, meter), day in zip(quantities, days, strict=True):
        segment = next((s for s in segments if s.start <= day < s.end), None)
        key = pricing.UsageKey(meter, record.provider, record.model)
        if segment is None or segment.version is None:
            reason = NO_PLAN
        else:
            version = segment.version
            cached = (version.pk, key)
            if cached not in verdicts:
                if version.pk not in plans:
                    plans[version.pk] = period_pricing.plan_for(version, tenant.currency)
                verdicts[cached] = _verdict(plans[version.pk], key, rates, segment.start)
            reason = verdicts[cached]
        if reason:
            events[(meter, record.provider, record.model, reason)] += 1
    if not events:
        return {}
    return {
        "unpriced": [
            {"meter": meter, "provider": provider, "model": model, "events": count, "reason": reason}
            for (meter, provider, model, reason), count in sorted(events.items())
        ]
    }


def _verdict(plan: pricing.Plan, key: pricing.UsageKey, rates: list[pricing.ProviderRate], on: date) -> str:
    price = pricing.match_price(plan.prices, key)
    if price is None:
        return NO_PRICE
    cost_plus = price.price_model is pricing.PriceModel.COST_PLUS
    if cost_plus and pricing.match_rate(rates, key, on=on, currency=plan.currency) is None:
        return NO_PROVIDER_RATE
    return ""
