from django import template

from billing.money import format_call_cost, format_money, format_quantity, plain_decimal

register = template.Library()


@register.filter
def money(amount, currency):
    return format_money(amount, currency)


@register.filter
def call_cost(amount, currency):
    return format_call_cost(amount, currency)


@register.filter
def precise(amount):
    """Every digit of a full-precision amount (trailing zeros dropped), for a title attribute."""
    return plain_decimal(amount) if amount is not None else ""


@register.filter
def quantity(value):
    return format_quantity(value)


@register.filter
def get(mapping, key):
    return mapping.get(key) if mapping else None
