"""Pricing: turn a period's usage into priced invoice lines (DESIGN §5, §6). Pure — no database.

Callers load a plan, the provider-rate catalogue and the period's aggregated usage into the dataclasses
below, call :func:`price_usage`, and store what it returns. Everything here is plain arithmetic so it can
be tested with hypothesis and reused by the invoice preview and the read API.

Decisions (docs/decisions/002-pricing.md has the reasoning):

- Money is ``Decimal`` at full precision (a 60-digit context) until each line is rounded once, half-up,
  to the currency's minor unit (ISO 4217 exponents; JPY/KRW have none). The total is the sum of the
  rounded lines, never a rounded sum.
- The most specific price wins: more literal characters in the model pattern beat fewer, an exact
  model beats a pattern that matches the same name, then a named provider beats "any". Matching is
  case-insensitive (``fnmatch`` globs on casefolded strings) because LiveKit does not normalise provider
  and model names. Equal specificity is broken by the lexicographically smaller pattern, so the result
  never depends on the order prices are listed in.
- Allowance, tiers, packages and the minimum charge belong to a *price*, not to a line: all usage a
  price matches is pooled, so a catch-all price with 10,000 free characters gives 10,000 in total however
  many TTS models were used. The allowance is shared across the price's lines in proportion to their
  quantity; tiered and package charges are computed on the pooled billable quantity and shared the same
  way.
- The minimum charge applies when the price matched any usage (quantity > 0, even if the allowance
  covered it all) and is billed as its own top-up line, computed from the rounded usage lines so the
  price's rounded lines add up to exactly the minimum.
- Usage no price matches, and ``cost_plus`` usage without a provider rate, lands in
  ``PricedInvoice.unmatched`` — never free, never dropped.
- Provider rates are used only in the plan's currency (no FX here); the current version of the most
  specific rate series on the given date wins.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, localcontext
from enum import StrEnum
from itertools import pairwise
from typing import NamedTuple, ParamSpec, TypeVar

PRECISION = 60
ZERO = Decimal(0)
ONE = Decimal(1)

# ISO 4217 minor units where they differ from 2. Unlisted three-letter codes use 2 decimals.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF"}
    | {"XOF", "XPF"}
)
THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})
CURRENCY_EXPONENTS: dict[str, int] = dict.fromkeys(ZERO_DECIMAL_CURRENCIES, 0) | dict.fromkeys(
    THREE_DECIMAL_CURRENCIES, 3
)


class PriceModel(StrEnum):
    PER_UNIT = "per_unit"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PACKAGE = "package"
    COST_PLUS = "cost_plus"


class LineKind(StrEnum):
    BASE_FEE = "base_fee"
    AGENT_FEE = "agent_fee"
    USAGE = "usage"
    MINIMUM = "minimum"
    DISCOUNT = "discount"  # a coupon's line (billing.discounts), negative
    TAX = "tax"  # a tax rate's line (billing.taxes): added, contained (inclusive) or reverse-charged


class UnmatchedReason(StrEnum):
    NO_PRICE = "no_price"
    NO_PROVIDER_RATE = "no_provider_rate"


class UsageKey(NamedTuple):
    """What an invoice line groups by (DESIGN §6). A plain ``(meter, provider, model)`` tuple also works."""

    meter: str
    provider: str
    model: str


P = ParamSpec("P")
R = TypeVar("R")


def _precise(function: Callable[P, R]) -> Callable[P, R]:
    """Run in the 60-digit context: no step before a line's rounding loses a digit an invoice could show."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with localcontext(prec=PRECISION):
            return function(*args, **kwargs)

    return wrapper


def _decimal(value: Decimal | int | str, name: str) -> Decimal:
    """Coerce exact inputs; refuse floats, whose binary rounding has no place in an invoice."""
    if isinstance(value, float | bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"{name} must be a Decimal, int or str, not {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{name} must be finite")
    return result


def _non_negative(value: Decimal | int | str, name: str) -> Decimal:
    result = _decimal(value, name)
    if result < 0:
        raise ValueError(f"{name} must be ≥ 0")
    return result


def _positive(value: Decimal | int | str, name: str) -> Decimal:
    result = _decimal(value, name)
    if result <= 0:
        raise ValueError(f"{name} must be > 0")
    return result


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Tier:
    """One tier: quantities up to and including ``up_to`` (``None`` = no limit), in the meter's units.

    ``unit_amount`` is per the price's ``unit_size``; ``flat_amount`` is charged once when any billable
    quantity falls in the tier (graduated) or when the tier is the one the quantity lands in (volume).
    """

    up_to: Decimal | None
    unit_amount: Decimal = ZERO
    flat_amount: Decimal = ZERO

    def __post_init__(self) -> None:
        if self.up_to is not None:
            _set(self, "up_to", _positive(self.up_to, "tier up_to"))
        _set(self, "unit_amount", _non_negative(self.unit_amount, "tier unit_amount"))
        _set(self, "flat_amount", _non_negative(self.flat_amount, "tier flat_amount"))


@dataclass(frozen=True)
class Price:
    """How one meter is charged, optionally only for one provider and a model glob (``gpt-4o-mini*``).

    ``price_model`` picks which of the amount fields matter: ``unit_amount`` per ``unit_size`` units
    (``per_unit``; also the unit for tier amounts), ``tiers`` (``graduated``/``volume``),
    ``package_amount`` per started ``package_size`` (``package``), or ``markup`` over the provider rate
    (``cost_plus``: rate * (1 + markup)). ``free_allowance`` and ``minimum_charge`` are per period.
    """

    meter: str
    price_model: PriceModel
    provider: str = ""
    model_pattern: str = ""
    unit_amount: Decimal = ZERO
    unit_size: Decimal = ONE
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal = ONE
    package_amount: Decimal = ZERO
    markup: Decimal = ZERO
    free_allowance: Decimal = ZERO
    minimum_charge: Decimal = ZERO
    id: int | str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _set(self, "price_model", PriceModel(self.price_model))
        _set(self, "tiers", tuple(self.tiers))
        for name in ("unit_amount", "package_amount", "markup", "free_allowance", "minimum_charge"):
            _set(self, name, _non_negative(getattr(self, name), name))
        for name in ("unit_size", "package_size"):
            _set(self, name, _positive(getattr(self, name), name))
        if self.price_model in (PriceModel.GRADUATED, PriceModel.VOLUME):
            _check_tiers(self.tiers)
        elif self.tiers:
            raise ValueError(f"{self.price_model} prices take no tiers")

    @property
    def scope(self) -> str:
        return f"{self.provider or 'any provider'}, {self.model_pattern or 'any model'}"


def _check_tiers(tiers: Sequence[Tier]) -> None:
    if not tiers:
        raise ValueError("tiered prices need at least one tier")
    if tiers[-1].up_to is not None:
        raise ValueError("the last tier must be unbounded (up_to=None)")
    bounds = [tier.up_to for tier in tiers[:-1] if tier.up_to is not None]
    if len(bounds) != len(tiers) - 1 or any(lower >= upper for lower, upper in pairwise(bounds)):
        raise ValueError("tier bounds must increase strictly and only the last tier may be unbounded")


@dataclass(frozen=True)
class Plan:
    """The version of a price plan in force for the period being priced (the caller picks the version)."""

    currency: str
    prices: tuple[Price, ...] = ()
    base_fee: Decimal = ZERO
    fee_per_active_agent: Decimal = ZERO

    def __post_init__(self) -> None:
        _set(self, "currency", _check_currency(self.currency))
        _set(self, "prices", tuple(self.prices))
        _set(self, "base_fee", _non_negative(self.base_fee, "base_fee"))
        _set(self, "fee_per_active_agent", _non_negative(self.fee_per_active_agent, "fee_per_active_agent"))
        scopes = [(p.meter, p.provider.casefold(), p.model_pattern.casefold()) for p in self.prices]
        if len(set(scopes)) != len(scopes):
            raise ValueError("two prices target the same meter, provider and model pattern")


@dataclass(frozen=True)
class ProviderRate:
    """A provider's list cost: ``cost_per_unit`` per ``unit_size`` units from ``effective_from`` on."""

    provider: str
    model_pattern: str
    meter: str
    cost_per_unit: Decimal
    unit_size: Decimal = ONE
    effective_from: date = date.min
    currency: str = "USD"

    def __post_init__(self) -> None:
        _set(self, "cost_per_unit", _non_negative(self.cost_per_unit, "cost_per_unit"))
        _set(self, "unit_size", _positive(self.unit_size, "unit_size"))
        _set(self, "currency", _check_currency(self.currency))


@dataclass(frozen=True)
class PricedLine:
    """One invoice line. ``amount`` and ``platform_cost`` are rounded once; ``unrounded_amount`` is not.

    ``unit_price`` is for display, per ``unit_size`` units: the list price for ``per_unit`` and
    ``cost_plus``, the package price for ``package``, the average price for tiered prices (``None`` when
    nothing was billable). ``platform_cost`` is what the providers charge us for the whole quantity
    (allowance included); ``None`` when the catalogue has no rate for it. A ``minimum`` line carries the
    price's meter, provider and model pattern and no quantity.
    """

    kind: LineKind
    description: str
    amount: Decimal
    unrounded_amount: Decimal
    meter: str = ""
    provider: str = ""
    model: str = ""
    quantity: Decimal = ZERO
    allowance: Decimal = ZERO
    billable_quantity: Decimal = ZERO
    unit_price: Decimal | None = None
    unit_size: Decimal = ONE
    platform_cost: Decimal | None = None
    price_model: PriceModel | None = None
    price_id: int | str | None = None


@dataclass(frozen=True)
class UnmatchedUsage:
    """Usage the plan cannot price: shown to admins and blocks nothing, but is never billed as zero."""

    key: UsageKey
    quantity: Decimal
    reason: UnmatchedReason
    platform_cost: Decimal | None = None


@dataclass(frozen=True)
class PricedInvoice:
    """What :func:`price_usage` returns; the total is derived from the lines so the two cannot disagree."""

    currency: str
    lines: tuple[PricedLine, ...]
    unmatched: tuple[UnmatchedUsage, ...] = ()

    @property
    def total(self) -> Decimal:
        """The sum of the rounded lines — the figure the customer pays (DESIGN §5)."""
        return sum((line.amount for line in self.lines), round_money(ZERO, self.currency))

    @property
    def platform_cost(self) -> Decimal:
        """Known provider cost of all usage, priced or not (lines without a rate contribute nothing)."""
        costs = [line.platform_cost for line in self.lines] + [u.platform_cost for u in self.unmatched]
        return sum((c for c in costs if c is not None), round_money(ZERO, self.currency))

    @property
    def uncosted(self) -> tuple[UsageKey, ...]:
        """Usage whose provider cost is unknown, so margin reports can say they are incomplete."""
        usage_lines = [line for line in self.lines if line.kind is LineKind.USAGE]
        keys = [UsageKey(x.meter, x.provider, x.model) for x in usage_lines if x.platform_cost is None]
        return tuple(keys + [u.key for u in self.unmatched if u.platform_cost is None])


def _check_currency(currency: str) -> str:
    code = currency.upper()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    return code


def currency_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit: 2 for USD/EUR, 0 for JPY/KRW, 3 for KWD."""
    return CURRENCY_EXPONENTS.get(_check_currency(currency), 2)


@_precise
def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-up to the currency's minor unit — the one rounding step of every line."""
    return amount.quantize(Decimal(1).scaleb(-currency_exponent(currency)), rounding=ROUND_HALF_UP)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """An amount already rounded by :func:`round_money` as an integer of minor units (Stripe's form)."""
    scaled = amount.scaleb(currency_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has digits below the minor unit of {currency}")
    return int(scaled)


def _literal_length(pattern: str) -> int:
    """Characters of an fnmatch pattern that must match literally (``*``, ``?`` and ``[...]`` do not)."""
    count, i = 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char in "*?":
            i += 1
            continue
        if char == "[":
            # fnmatch's rule: a leading ! and a leading ] belong to the class; an unclosed [ is literal.
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j != -1:
                i = j + 1
                continue
        count += 1
        i += 1
    return count


def specificity(provider: str, model_pattern: str) -> tuple[int, bool, bool]:
    """Rank of a price or rate scope, higher wins: model literals, then exact model, then named provider."""
    is_exact = bool(model_pattern) and _literal_length(model_pattern) == len(model_pattern)
    return (_literal_length(model_pattern), is_exact, bool(provider))


def _matches(scoped: Price | ProviderRate, key: UsageKey) -> bool:
    meter, provider, model = key
    if scoped.meter != meter:
        return False
    if scoped.provider and scoped.provider.casefold() != provider.casefold():
        return False
    return not scoped.model_pattern or fnmatch.fnmatchcase(model.casefold(), scoped.model_pattern.casefold())


def _preference(scoped: Price | ProviderRate) -> tuple[int, bool, bool, str, str]:
    literal, is_exact, has_provider = specificity(scoped.provider, scoped.model_pattern)
    # Negated so that min() picks the most specific; equal ranks fall back to the smaller pattern text.
    return (
        -literal,
        not is_exact,
        not has_provider,
        scoped.provider.casefold(),
        scoped.model_pattern.casefold(),
    )


def match_price(prices: Iterable[Price], key: UsageKey) -> Price | None:
    """The most specific price for a usage key, or ``None`` when no price matches."""
    candidates = [price for price in prices if _matches(price, UsageKey(*key))]
    return min(candidates, key=_preference, default=None)


def match_rate(
    rates: Iterable[ProviderRate], key: UsageKey, *, on: date, currency: str
) -> ProviderRate | None:
    """The provider rate in force on ``on`` for a usage key: most specific scope, then latest version."""
    currency = _check_currency(currency)
    candidates = [
        rate
        for rate in rates
        if rate.currency == currency and rate.effective_from <= on and _matches(rate, UsageKey(*key))
    ]
    return min(candidates, key=lambda r: (_preference(r), -r.effective_from.toordinal()), default=None)


def _check_rates(rates: Sequence[ProviderRate]) -> None:
    versions = [
        (r.meter, r.provider.casefold(), r.model_pattern.casefold(), r.currency, r.effective_from)
        for r in rates
    ]
    if len(set(versions)) != len(versions):
        raise ValueError("two provider rates share meter, provider, model pattern, currency and date")


@_precise
def graduated_amount(tiers: Sequence[Tier], unit_size: Decimal, quantity: Decimal) -> Decimal:
    """Each slice of the quantity at its own tier's price, plus the flat amount of every tier entered."""
    # Sum the exact slice products and divide once, so that equal tier prices give exactly per_unit.
    per_size, flat, lower = ZERO, ZERO, ZERO
    for tier in tiers:
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        per_size += (upper - lower) * tier.unit_amount
        flat += tier.flat_amount
        lower = upper
    return per_size / unit_size + flat


@_precise
def volume_amount(tiers: Sequence[Tier], unit_size: Decimal, quantity: Decimal) -> Decimal:
    """The whole quantity at the price of the tier it lands in. Not monotone: reaching a tier can lower it."""
    if quantity <= 0:
        return ZERO
    tier = next(t for t in tiers if t.up_to is None or quantity <= t.up_to)
    return quantity * tier.unit_amount / unit_size + tier.flat_amount


@_precise
def charge_for(price: Price, billable_quantity: Decimal, rate: ProviderRate | None = None) -> Decimal:
    """What a price charges for a billable quantity (after allowance, before minimum), unrounded.

    ``cost_plus`` needs the provider rate; the others ignore it.
    """
    quantity = _non_negative(billable_quantity, "billable_quantity")
    match price.price_model:
        case PriceModel.PER_UNIT:
            return quantity * price.unit_amount / price.unit_size
        case PriceModel.GRADUATED:
            return graduated_amount(price.tiers, price.unit_size, quantity)
        case PriceModel.VOLUME:
            return volume_amount(price.tiers, price.unit_size, quantity)
        case PriceModel.PACKAGE:
            return math.ceil(quantity / price.package_size) * price.package_amount
        case PriceModel.COST_PLUS:
            if rate is None:
                raise ValueError("cost_plus needs a provider rate")
            return quantity * rate.cost_per_unit / rate.unit_size * (1 + price.markup)


def _cost(rate: ProviderRate | None, quantity: Decimal, currency: str) -> Decimal | None:
    return None if rate is None else round_money(quantity * rate.cost_per_unit / rate.unit_size, currency)


class _Member(NamedTuple):
    key: UsageKey
    quantity: Decimal
    rate: ProviderRate | None


def _price_lines(price: Price, members: list[_Member], currency: str) -> list[PricedLine]:
    """Lines for all usage one price matched: pooled allowance and tiers, shared by quantity."""
    pooled = sum(m.quantity for m in members)
    allowance = min(price.free_allowance, pooled)
    billable = pooled - allowance
    per_quantity = price.price_model in (PriceModel.PER_UNIT, PriceModel.COST_PLUS)
    pooled_charge = ZERO if per_quantity else charge_for(price, billable)
    lines = []
    for key, quantity, rate in members:
        # Shares by quantity: each line's billable part is quantity × billable / pooled, one rounding
        # step at 60 digits, so amounts stay monotone in the allowance.
        line_billable = quantity * billable / pooled
        line_allowance = quantity - line_billable
        amount = charge_for(price, line_billable, rate) if per_quantity else pooled_charge * quantity / pooled
        if price.price_model is PriceModel.COST_PLUS:
            assert rate is not None
            unit_price, unit_size = rate.cost_per_unit * (1 + price.markup), rate.unit_size
        elif price.price_model is PriceModel.PACKAGE:
            unit_price, unit_size = price.package_amount, price.package_size
        elif price.price_model is PriceModel.PER_UNIT:
            unit_price, unit_size = price.unit_amount, price.unit_size
        else:
            unit_price = pooled_charge / billable * price.unit_size if billable else None
            unit_size = price.unit_size
        lines.append(
            PricedLine(
                kind=LineKind.USAGE,
                description=f"{key.meter}: {key.provider or 'no provider'} {key.model or 'no model'}",
                amount=round_money(amount, currency),
                unrounded_amount=amount,
                meter=key.meter,
                provider=key.provider,
                model=key.model,
                quantity=quantity,
                allowance=line_allowance,
                billable_quantity=line_billable,
                unit_price=unit_price,
                unit_size=unit_size,
                platform_cost=_cost(rate, quantity, currency),
                price_model=price.price_model,
                price_id=price.id,
            )
        )
    minimum = round_money(price.minimum_charge, currency)
    charged = sum(line.amount for line in lines)
    if charged < minimum:
        lines.append(
            PricedLine(
                kind=LineKind.MINIMUM,
                description=f"Minimum charge for {price.meter} ({price.scope})",
                amount=minimum - charged,
                unrounded_amount=minimum - charged,
                meter=price.meter,
                provider=price.provider,
                model=price.model_pattern,
                platform_cost=round_money(ZERO, currency),
                price_model=price.price_model,
                price_id=price.id,
            )
        )
    return lines


def _fee_lines(plan: Plan, active_agents: int) -> list[PricedLine]:
    lines = []
    if plan.base_fee:
        lines.append(
            PricedLine(
                kind=LineKind.BASE_FEE,
                description="Base fee",
                amount=round_money(plan.base_fee, plan.currency),
                unrounded_amount=plan.base_fee,
                quantity=ONE,
                billable_quantity=ONE,
                unit_price=plan.base_fee,
                platform_cost=round_money(ZERO, plan.currency),
            )
        )
    if plan.fee_per_active_agent and active_agents:
        count = Decimal(active_agents)
        lines.append(
            PricedLine(
                kind=LineKind.AGENT_FEE,
                description="Active agents",
                amount=round_money(count * plan.fee_per_active_agent, plan.currency),
                unrounded_amount=count * plan.fee_per_active_agent,
                quantity=count,
                billable_quantity=count,
                unit_price=plan.fee_per_active_agent,
                platform_cost=round_money(ZERO, plan.currency),
            )
        )
    return lines


@_precise
def price_usage(
    plan: Plan,
    usage: Mapping[UsageKey, Decimal],
    *,
    active_agents: int,
    provider_rates: Sequence[ProviderRate],
    on: date,
) -> PricedInvoice:
    """Price one period's aggregated usage under one plan version.

    ``usage`` maps ``(meter, provider, model)`` to the period's quantity (summed from rollups by the caller);
    zero quantities produce no line. ``on`` picks the provider rates in force (normally the period
    start). Lines come out in a fixed order — fees, usage by key, minimum top-ups — whatever the order
    of ``usage``, ``plan.prices`` or ``provider_rates``.
    """
    if isinstance(active_agents, bool) or not isinstance(active_agents, int) or active_agents < 0:
        raise ValueError("active_agents must be an int ≥ 0")
    _check_rates(provider_rates)
    currency = plan.currency
    quantities = {UsageKey(*key): _non_negative(q, "quantity") for key, q in usage.items()}
    groups: dict[Price, list[_Member]] = defaultdict(list)
    unmatched = []
    rates_of_meter: dict[str, list[ProviderRate]] = defaultdict(list)  # a rate matches its own meter only
    for rate in provider_rates:
        rates_of_meter[rate.meter].append(rate)
    for key in sorted(quantities):
        quantity = quantities[key]
        if not quantity:
            continue
        price = match_price(plan.prices, key)
        rate = match_rate(rates_of_meter.get(key.meter, []), key, on=on, currency=currency)
        if price is None or (price.price_model is PriceModel.COST_PLUS and rate is None):
            reason = UnmatchedReason.NO_PRICE if price is None else UnmatchedReason.NO_PROVIDER_RATE
            unmatched.append(UnmatchedUsage(key, quantity, reason, _cost(rate, quantity, currency)))
            continue
        groups[price].append(_Member(key, quantity, rate))

    priced = [line for price, members in groups.items() for line in _price_lines(price, members, currency)]
    usage_lines = sorted(
        (line for line in priced if line.kind is LineKind.USAGE),
        key=lambda line: (line.meter, line.provider, line.model),
    )
    minimum_lines = sorted(
        (line for line in priced if line.kind is LineKind.MINIMUM),
        key=lambda line: (line.meter, line.provider.casefold(), line.model.casefold()),
    )
    lines = _fee_lines(plan, active_agents) + usage_lines + minimum_lines
    return PricedInvoice(currency=currency, lines=tuple(lines), unmatched=tuple(unmatched))


@_precise
def marginal_charge(
    price: Price, position: Decimal, quantity: Decimal, rate: ProviderRate | None = None
) -> Decimal:
    """What ``quantity`` costs at the margin when the price has already pooled ``position`` of the period's
    usage: a call's own cost (billing.call_costs, decision 017), unrounded, before allowance and minimum.

    Linear prices charge their unit price (package: the package price per unit, pro rata); graduated tiers
    charge the slices between ``position`` and ``position + quantity`` (never a tier's flat amount); volume
    tiers charge the whole quantity at the tier ``position + quantity`` lands in. Consecutive quantities of a
    graduated price therefore add up to :func:`graduated_amount` without flat amounts.
    """
    position = _non_negative(position, "position")
    quantity = _non_negative(quantity, "quantity")
    match price.price_model:
        case PriceModel.PER_UNIT | PriceModel.COST_PLUS:
            return charge_for(price, quantity, rate)
        case PriceModel.PACKAGE:
            return quantity * price.package_amount / price.package_size
        case PriceModel.GRADUATED | PriceModel.VOLUME:
            return marginal_tiered(tier_bounds(price), price.unit_size, price.price_model, position, quantity)


def tier_bounds(price: Price) -> tuple[tuple[Decimal, Decimal | None, Decimal], ...]:
    """A tiered price's tiers as (lower, upper or None, unit amount), for :func:`marginal_tiered`."""
    bounds, lower = [], ZERO
    for tier in price.tiers:
        bounds.append((lower, tier.up_to, tier.unit_amount))
        if tier.up_to is not None:
            lower = tier.up_to
    return tuple(bounds)


def marginal_tiered(
    bounds: Sequence[tuple[Decimal, Decimal | None, Decimal]],
    unit_size: Decimal,
    model: PriceModel,
    position: Decimal,
    quantity: Decimal,
) -> Decimal:
    """The arithmetic of :func:`marginal_charge` for tiers, without its checks (callers run it in the 60-digit
    context, on validated prices: billing.call_costs prices every tiered quantity of a batch through it)."""
    reached = position + quantity
    if model is PriceModel.VOLUME:
        if not quantity:
            return ZERO
        rate = next(amount for _, upper, amount in bounds if upper is None or reached <= upper)
        return quantity * rate / unit_size
    total = ZERO
    for lower, upper, amount in bounds:
        if lower >= reached:
            break
        start = max(lower, position)
        end = reached if upper is None else min(reached, upper)
        if end > start:
            total += (end - start) * amount
    return total / unit_size
